"""Peers: the P2P service with trust, handshake, heartbeat and capabilities (`service`),
and HTTP requests carried over a peer stream (`http_over_stream`).
"""

from __future__ import annotations

from gate.services.p2p.http_over_stream import (
    PeerResponse,
    request_over_stream,
    serve_http_stream,
)
from gate.services.p2p.service import (
    ControlStream,
    P2PService,
    PeerState,
    parse_peer_spec,
)

__all__ = [
    "ControlStream",
    "P2PService",
    "PeerResponse",
    "PeerState",
    "parse_peer_spec",
    "request_over_stream",
    "serve_http_stream",
]
