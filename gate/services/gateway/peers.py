"""Requests this node sends on to a trusted peer: the one X-Target-Node names
(`PeerForwarding.target`), or one serving a model no engine here serves; the request
goes over an HttpProxy stream and the peer's answer is relayed as it arrives
(`PeerForwarding.forward`). What a peer may ask of this node is `limits.PeerLimiter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from gate.config import ServerConfig
from gate.protocol import NodeId
from gate.services.engines.client import HOP_BY_HOP, UpstreamError
from gate.services.gateway.exchange import ApiError, ApiRoute, Exchange, api_error
from gate.services.gateway.metrics import Metrics
from gate.services.gateway.response import pass_through
from gate.services.http.router import Scope, Send
from gate.services.p2p.http_over_stream import PeerRefused, request_over_stream
from gate.services.p2p.service import P2PService, PeerState
from gate.services.transport.quic import TransportError

__all__ = ["PeerForwarding"]

# What a request keeps when it goes to a peer (spec §7.1): not the credentials its client
# presented here, whether Gate's key or a browser's cookie (peers trust node ids), not the
# target header (the peer serves it locally), not the hop-by-hop headers.
_CREDENTIALS: Final = {b"authorization", b"x-api-key", b"proxy-authorization", b"cookie"}
_NOT_TO_PEERS: Final = HOP_BY_HOP | _CREDENTIALS | {b"x-target-node"}


class PeerForwarding:
    """Forwards requests to this node's trusted peers (`peers`), counting them in
    `metrics` under the model label `model_label` gives."""

    def __init__(
        self, peers: P2PService, metrics: Metrics, model_label: Callable[[str], str]
    ) -> None:
        self.peers, self.metrics, self.model_label = peers, metrics, model_label

    def target(self, text: str) -> PeerState | None:
        """The peer X-Target-Node names; None when it names this node (served here)."""
        try:
            node_id = NodeId.parse(text)
        except ValueError:
            raise ApiError(400, f"X-Target-Node: {text[:80]!r} is not a node id") from None
        if node_id == self.peers.node_id:
            return None
        peer = self.peers.peer(node_id)
        if peer is None:
            raise ApiError(
                404,
                f"X-Target-Node: {node_id} is not a trusted peer of this node",
                code="peer_not_found",
            )
        if not peer.connected:
            raise ApiError(
                503,
                f"X-Target-Node: peer {node_id} is not reachable now "
                f"({type(peer.status).__name__.lower()})",
            )
        return peer

    def serving(self, model: str) -> PeerState | None:
        """A peer to send a request for `model` to, when no engine here serves it."""
        serving = self.peers.peers_serving(model)
        return serving[0] if serving else None

    async def forward(
        self,
        route: ApiRoute,
        scope: Scope,
        body: bytes,
        exchange: Exchange,
        send: Send,
        peer: PeerState,
        server: ServerConfig,
    ) -> None:
        """Send the request to a peer over an HttpProxy stream, with `server`'s timeouts;
        relay its answer."""
        exchange.provider = exchange.peer = str(peer.node_id)
        exchange.model_label = self.model_label(exchange.model)
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_TO_PEERS]
        target = scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        self.metrics.request_started(exchange.provider, exchange.model_label)
        exchange.metered = True
        with self.peers.request_to(peer):
            try:
                stream = await self.peers.open_http_stream(peer)
                response = await request_over_stream(
                    stream,
                    method=scope["method"],
                    target=target,
                    headers=headers,
                    body=body,
                    peer=str(peer.node_id),
                    response_timeout=server.response_timeout,
                    read_timeout=server.stream_idle_timeout,
                )
            except TransportError as exc:
                raise api_error(exc, f"peer {peer.node_id}") from None
            except PeerRefused as exc:  # spec §7.5: the status its code maps to
                raise ApiError(exc.status, str(exc)) from None
            except UpstreamError as exc:  # its message names the peer
                raise api_error(exc) from None
            async with response:
                exchange.status = response.status
                await pass_through(response, send, exchange, route.dialect, f"peer {peer.node_id}")
