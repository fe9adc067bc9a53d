"""Peer-to-peer: this node's iroh endpoint, its trusted peers, and requests between them.

Theory of operation
-------------------
The service binds one iroh endpoint with the node key (so NodeId = iroh endpoint id)
and does two things at once:

- Accepting. Every incoming connection is authenticated by iroh; each stream it opens
  starts with a preamble (spec §3) that says what it carries, and the dispatch table
  (gate.services.p2p.dispatch) says who may open it and what serves it. NodeControl
  streams get the responder side of the handshake (gate.services.p2p.session): the
  claimed node id must be the authenticated one and a trusted peer, else the answer is a
  refusal with the reason (§5.4). HttpProxy streams from a trusted peer run through this
  node's own API pipeline (gate.services.p2p.http_over_stream); from anyone else they
  get an UNAUTHORIZED error frame and are closed, and nothing of them reaches an engine.
- Dialing. One task per trusted peer keeps one connection to it: connect, handshake,
  then the heartbeat (gate.services.p2p.session) until the peer stops answering; the
  connection is then dropped. Failures retry with jittered exponential backoff. Status
  follows ConnectionStatus: Connecting(attempt) -> Connected(since) -> Disconnected /
  Failed(reason).

Requests to a peer (gate.services.gateway.peers) open an HttpProxy stream on that peer's
connection. Requests that arrived from a peer are never sent on to another peer.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import msgspec
import trio

from gate.config import P2PConfig
from gate.nursery import ServiceContext
from gate.peers_config import parse_peer_spec
from gate.protocol import (
    Capabilities,
    Connected,
    Connecting,
    ConnectionStatus,
    Disconnected,
    ErrorCode,
    Failed,
    NodeId,
    ProtocolError,
)
from gate.services.control.events import EventBus
from gate.services.http.router import ASGIApp
from gate.services.p2p.dispatch import StreamDispatch, StreamHandler, node_streams
from gate.services.p2p.peers import PeersCache, PeerState, TrustedPeers
from gate.services.p2p.relay_client import RelayClient
from gate.services.p2p.session import ControlStream, NodeControl, Refused
from gate.services.transport.quic import (
    Connection,
    Endpoint,
    QuicStream,
    TransportError,
    bind_endpoint,
)

__all__ = ["ControlStream", "P2PService", "PeerState", "parse_peer_spec"]

log = logging.getLogger("gate.p2p")

_CONNECT_TIMEOUT: Final = 10.0
_BACKOFF_INITIAL, _BACKOFF_MAX = 0.5, 30.0


class P2PService:
    def __init__(
        self,
        config: P2PConfig,
        *,
        secret_key: bytes,
        data_dir: Path,
        app: Callable[[], ASGIApp],
        local_capabilities: Callable[[], Capabilities],
        events: EventBus | None = None,
        relay: RelayClient | None = None,
        tls: StreamHandler | None = None,
    ) -> None:
        """`relay`: the relays to register with (`[relay]`), whose tls_proxy streams
        `tls` serves (gate.services.p2p.tls_proxy)."""
        self._events = events
        self.relay = relay
        self.config = config
        self._secret_key = secret_key
        self.node_id = NodeId(_public_key(secret_key))
        self.endpoint: Endpoint | None = None
        self.address = ""  # node_id@ip:port once bound
        self._trust = TrustedPeers(config.trusted_peers, PeersCache(data_dir), own=self.node_id)
        self.peers: dict[NodeId, PeerState] = self._trust.by_id
        self._control = NodeControl(
            self.node_id,
            self._trust,
            local_capabilities=local_capabilities,
            heartbeat_interval=lambda: self.config.heartbeat_interval,
        )
        self._dispatch = StreamDispatch(
            node_streams(control=self._control.respond, app=app, tls=tls),
            trusted=self._trust.trusted,
            relay=relay.registered if relay is not None else lambda _: False,
        )
        self._maintainers: dict[NodeId, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()

    # --- trust -------------------------------------------------------------------

    def trusted(self, node_id: NodeId) -> bool:
        return self._trust.trusted(node_id)

    def update_trusted(self, specs: list[str]) -> None:
        """Apply a new trusted_peers list (config reload): start and stop dialers."""
        dropped, added = self._trust.update(specs)
        for node_id in dropped:
            scope = self._maintainers.pop(node_id, None)
            if scope is not None:
                scope.cancel()
        if self._nursery is not None:
            for peer in added:
                self._nursery.start_soon(self._maintain, peer)

    # --- the service -------------------------------------------------------------

    async def run(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        mode = self.config.iroh_relay_mode
        iroh_relay = (
            "disabled"
            if mode == "disabled"
            else (self.config.iroh_relay_urls if mode == "custom" else "default")
        )
        endpoint = None
        delay = _BACKOFF_INITIAL
        while endpoint is None:
            try:
                endpoint = await bind_endpoint(
                    self._secret_key,
                    port=self.config.port,
                    host=self.config.bind_host,
                    iroh_relay=iroh_relay,
                    discovery=self.config.discovery,
                )
            except TransportError as exc:
                # The node still serves locally: report started (so start-up completes)
                # and keep trying, rather than hold the whole node back.
                log.error(
                    "cannot start P2P; retrying",
                    extra={"port": self.config.port, "error": str(exc), "retry_in_s": delay},
                )
                task_status.started("")
                task_status = trio.TASK_STATUS_IGNORED
                with trio.move_on_after(delay):
                    await ctx.wait_shutdown()
                if ctx.stopping:
                    return
                delay = min(_BACKOFF_MAX, delay * 2)
        self.endpoint = endpoint
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(endpoint.serve, self._serve_connection)
                nursery.start_soon(self._control.watch_models)
                if self.relay is not None:
                    nursery.start_soon(self.relay.run, endpoint, self._dispatch.serve)
                for peer in list(self.peers.values()):
                    nursery.start_soon(self._maintain, peer)
                dialable = endpoint.direct_addresses or endpoint.addresses
                address = self.address = f"{self.node_id}@{','.join(dialable)}"
                log.info("p2p listening", extra={"address": address})
                task_status.started(address)
                await ctx.wait_shutdown()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            for peer in self.peers.values():
                peer.connection = None
            await endpoint.aclose()

    # --- accepting ---------------------------------------------------------------

    async def _serve_connection(self, conn: Connection) -> None:
        remote = conn.remote_id
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await conn.accept_stream()
                except (TransportError, trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                nursery.start_soon(self._dispatch.serve, conn, remote, stream)

    # --- dialing -----------------------------------------------------------------

    async def _maintain(self, peer: PeerState) -> None:
        with trio.CancelScope() as scope:
            self._maintainers[peer.node_id] = scope
            attempt = 0
            while self.peers.get(peer.node_id) is peer:
                attempt += 1
                self._set_status(peer, Connecting(attempt=attempt))
                reason = ""  # why the connection is dropped: its streams' errors say it
                code = 0  # spec §2.3: 0 unless the reason has a code of its own
                try:
                    await self._session(peer)
                    attempt = 0  # a session that got connected resets the backoff
                except Refused as exc:
                    code = ErrorCode.UNAUTHORIZED  # §5.4: a refused dialer closes so
                    self._set_status(peer, Failed(reason=str(exc)))
                    log.warning(
                        "peer refused us", extra={"peer": str(peer.node_id), "reason": str(exc)}
                    )
                except (
                    TransportError,
                    trio.TooSlowError,
                    trio.BrokenResourceError,
                    ProtocolError,
                ) as exc:
                    was_connected = isinstance(peer.status, Connected)
                    reason = _describe(exc)
                    self._set_status(
                        peer,
                        Disconnected(since_ms=_now_ms())
                        if was_connected
                        else Failed(reason=reason),
                    )
                    log.info(
                        "peer unavailable", extra={"peer": str(peer.node_id), "reason": reason}
                    )
                finally:
                    if peer.connection is not None:
                        peer.connection.close(code, reason)
                    peer.connection = None
                delay = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2 ** min(attempt, 6))
                await trio.sleep(delay * self._rng.uniform(0.5, 1.0))  # jittered
        self._maintainers.pop(peer.node_id, None)

    async def _session(self, peer: PeerState) -> None:
        assert self.endpoint is not None
        with trio.fail_after(_CONNECT_TIMEOUT):
            conn = await self.endpoint.connect(peer.node_id, peer.addresses)
            peer.connection = conn
            control = await self._control.handshake(conn, peer)
        self._set_status(peer, Connected(since_ms=_now_ms()))
        peer.last_seen_ms = _now_ms()
        self._trust.save()
        log.info(
            "peer connected", extra={"peer": str(peer.node_id), "models": sorted(peer.models())}
        )
        await self._control.heartbeat(peer, control)

    def _set_status(self, peer: PeerState, status: ConnectionStatus) -> None:
        peer.status = status
        if self._events is not None:
            self._events.publish(
                "peer", {"node_id": str(peer.node_id), "status": msgspec.to_builtins(status)}
            )

    # --- used by the gateway -----------------------------------------------------

    def peer(self, node_id: NodeId) -> PeerState | None:
        return self._trust.get(node_id)

    def peers_serving(self, model: str) -> list[PeerState]:
        """Connected peers that advertise `model`, lowest load_factor first."""
        return self._trust.serving(model)

    def peer_models(self) -> dict[str, list[str]]:
        return self._trust.models()

    @contextlib.contextmanager
    def request_to(self, peer: PeerState) -> Iterator[None]:
        """Count a request to `peer` while it runs. The first one quickens the peer's
        heartbeat at once (see gate.services.p2p.session), not at its next ping."""
        peer.in_flight += 1
        if peer.in_flight == 1:
            self._control.wake_heartbeats()
        try:
            yield
        finally:
            peer.in_flight -= 1

    async def open_http_stream(self, peer: PeerState) -> QuicStream:
        if peer.connection is None:
            raise TransportError(f"peer {peer.node_id} is not connected")
        return await peer.connection.open_stream()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _now_ms() -> int:
    return int(time.time() * 1000)


def _public_key(secret_key: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(secret_key)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
