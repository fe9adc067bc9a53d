"""Peers: the P2P service that binds the endpoint, accepts connections and dials the
trusted peers (`service`); incoming streams by type, with who may open each
(`dispatch`); NodeControl sessions: handshake, heartbeat, capabilities (`session`);
trust and the peers.json cache (`peers`); HTTP requests carried over a peer stream
(`http_over_stream`); registering with Gate relays (`relay_client`) and the relay door,
TLS ended on a relay's tls_proxy stream (`tls_proxy`).
"""

from __future__ import annotations

from gate.services.p2p.dispatch import IncomingStream, Opener, Route, StreamDispatch
from gate.services.p2p.http_over_stream import (
    PeerResponse,
    request_over_stream,
    serve_http_stream,
)
from gate.services.p2p.peers import PeersCache, PeerState, TrustedPeers
from gate.services.p2p.service import P2PService, parse_peer_spec
from gate.services.p2p.session import ControlStream, NodeControl

__all__ = [
    "ControlStream",
    "IncomingStream",
    "NodeControl",
    "Opener",
    "P2PService",
    "PeerResponse",
    "PeerState",
    "PeersCache",
    "Route",
    "StreamDispatch",
    "TrustedPeers",
    "parse_peer_spec",
    "request_over_stream",
    "serve_http_stream",
]
