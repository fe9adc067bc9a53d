"""Peer-to-peer: this node's iroh endpoint, its trusted peers, and requests between them.

Theory of operation
-------------------
The service binds one iroh endpoint with the node key (so NodeId = iroh endpoint id)
and does two things at once:

- Accepting. Every incoming connection is authenticated by iroh; each stream it opens
  starts with a preamble (spec §3) that says what it carries. NodeControl streams get
  the responder side of the handshake: the claimed node id must be the authenticated
  one and a trusted peer, else the answer is a refusal with the reason (§5.4).
  HttpProxy streams from a trusted peer run through this node's own API pipeline
  (gate.services.p2p.http_over_stream); from anyone else they get an UNAUTHORIZED error frame and
  are closed, and nothing of them reaches an engine.
- Dialing. One task per trusted peer keeps one connection to it: connect, handshake
  (learning the peer's capabilities), then a Ping every `heartbeat_interval`; a missing
  Pong for three intervals marks the peer Disconnected and the connection is dropped.
  While requests to the peer are in flight the heartbeat quickens (a Ping every second,
  a Pong more than four seconds late means the peer is gone), so a stream from a peer
  that died mid-answer ends within seconds: iroh's Python binding does not expose QUIC's
  keep-alive or idle timeout, and on its own the connection notices only after 30 s.
  Capabilities are asked for every fourth ping, and pushed to every peer within about
  half a second when this node's models change (an unasked capability_response, §5.5).
  Failures retry with jittered exponential backoff. Status follows ConnectionStatus:
  Connecting(attempt) -> Connected(since) -> Disconnected / Failed(reason).

Requests to a peer (gate.services.gateway.pipeline) open an HttpProxy stream on that peer's
connection. Requests that arrived from a peer are never sent on to another peer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from gate import __version__
from gate.config import P2PConfig
from gate.identity import write_secret_file_atomic
from gate.nursery import ServiceContext
from gate.peers_config import parse_peer_spec
from gate.protocol import (
    EOF,
    NEED_DATA,
    NODE_CONTROL,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Capabilities,
    CapabilityRequest,
    CapabilityResponse,
    Channel,
    Connected,
    Connecting,
    ConnectionStatus,
    Disconnected,
    ErrorCode,
    Failed,
    Handshake,
    HandshakeResponse,
    NodeError,
    NodeId,
    NodeMessage,
    PeerInfo,
    Ping,
    Pong,
    Preamble,
    PreambleReader,
    ProtocolError,
    Role,
    StreamError,
    StreamType,
    encode_frame,
    encode_preamble,
    negotiate_version,
)
from gate.services.control.events import EventBus
from gate.services.http.router import ASGIApp
from gate.services.p2p.http_over_stream import serve_http_stream
from gate.services.transport.framed import close_quietly, receive_event
from gate.services.transport.quic import (
    Connection,
    Endpoint,
    QuicStream,
    TransportError,
    bind_endpoint,
)

__all__ = ["ControlStream", "P2PService", "PeerState", "parse_peer_spec"]

log = logging.getLogger("gate.p2p")

PEERS_CACHE: Final = "peers.json"
_PREAMBLE_TIMEOUT: Final = 10.0
_CONNECT_TIMEOUT: Final = 10.0
_MODELS_POLL_INTERVAL: Final = 0.5  # how soon a change of this node's models reaches peers
_BACKOFF_INITIAL, _BACKOFF_MAX = 0.5, 30.0
# While requests to a peer are in flight: a Ping every _BUSY_PING_INTERVAL, and a peer
# whose Pong is _BUSY_PONG_TIMEOUT late is taken for dead (its connection is closed,
# which ends every stream on it). A live peer answers Pings whatever its engine does, so
# an engine slow to produce the next token never ends a stream; the timeout leaves room
# for a lost packet to be sent again on a slow path. Idle peers keep the configured pace.
_BUSY_PING_INTERVAL: Final = 1.0
_BUSY_PONG_TIMEOUT: Final = 4.0
_encode = msgspec.msgpack.Encoder().encode


@dataclass(eq=False)
class PeerState:
    node_id: NodeId
    addresses: list[str] = field(default_factory=list)
    status: ConnectionStatus = field(default_factory=Disconnected)
    capabilities: Capabilities | None = None
    last_seen_ms: int | None = None
    connection: Connection | None = None
    in_flight: int = 0

    @property
    def connected(self) -> bool:
        return isinstance(self.status, Connected) and self.connection is not None

    @property
    def load(self) -> float:
        return self.capabilities.load_factor if self.capabilities else 1.0

    def models(self) -> set[str]:
        if self.capabilities is None:
            return set()
        return {m.id for m in self.capabilities.supported_models}

    def info(self) -> PeerInfo:
        return PeerInfo(
            node_id=str(self.node_id),
            addresses=list(self.addresses),
            status=self.status,
            last_seen_ms=self.last_seen_ms,
            capabilities=self.capabilities,
        )


class ControlStream:
    """A NodeControl stream with its channel: framed messages in and out."""

    def __init__(self, stream: QuicStream, role: Role) -> None:
        self.stream = stream
        self.channel = Channel(NODE_CONTROL, role)
        self._ids = 0

    def message(self, payload: Any, reply_to: int | None = None) -> NodeMessage:
        self._ids += 1
        return NodeMessage(
            version=PROTOCOL_VERSION,
            id=self._ids,
            timestamp=int(time.time() * 1000),
            payload=payload,
            reply_to=reply_to,
        )

    async def send(self, payload: Any, reply_to: int | None = None) -> None:
        await self.stream.send_all(self.channel.send(self.message(payload, reply_to)))

    async def receive(self) -> NodeMessage | None:
        """The next message, or None at a clean end of the stream."""
        event = await receive_event(self.stream, self.channel)
        if event is EOF:
            return None
        assert isinstance(event, NodeMessage)
        return event


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
    ) -> None:
        self._events = events
        self.config = config
        self._secret_key = secret_key
        self._cache_path = data_dir / PEERS_CACHE
        self._app = app
        self._local_capabilities = local_capabilities
        self.node_id = NodeId(_public_key(secret_key))
        self.endpoint: Endpoint | None = None
        # Bumped when this node's models change: each session then pushes its
        # capabilities to the peer at once (spec §5.5) instead of at the next ask.
        self._models_version = 0
        # Set (and replaced) to wake the heartbeats: models changed, or a peer got busy.
        self._wake = trio.Event()
        self.address = ""  # node_id@ip:port once bound
        self.peers: dict[NodeId, PeerState] = {}
        self._maintainers: dict[NodeId, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        cache = self._load_cache()
        for spec in config.trusted_peers:
            self._trust(spec, cache)

    # --- trust -------------------------------------------------------------------

    def _trust(self, spec: str, cache: dict[str, Any] | None = None) -> PeerState | None:
        try:
            node_id, addrs = parse_peer_spec(spec)
        except ValueError as exc:
            log.warning("ignoring trusted peer entry", extra={"entry": spec, "error": str(exc)})
            return None
        peer = self.peers.get(node_id) or PeerState(node_id)
        cached = (cache or {}).get(str(node_id), {})
        peer.addresses = addrs or list(cached.get("addresses", [])) or peer.addresses
        peer.last_seen_ms = peer.last_seen_ms or cached.get("last_seen_ms")
        self.peers[node_id] = peer
        return peer

    def trusted(self, node_id: NodeId) -> bool:
        return node_id in self.peers

    def update_trusted(self, specs: list[str]) -> None:
        """Apply a new trusted_peers list (config reload): start and stop dialers."""
        wanted: dict[NodeId, str] = {}
        for spec in specs:
            try:
                wanted[parse_peer_spec(spec)[0]] = spec
            except ValueError:
                log.warning("ignoring trusted peer entry", extra={"entry": spec})
        for node_id in list(self.peers):
            if node_id not in wanted:
                log.info("peer no longer trusted", extra={"peer": str(node_id)})
                self.peers.pop(node_id)
                scope = self._maintainers.pop(node_id, None)
                if scope is not None:
                    scope.cancel()
        for node_id, spec in wanted.items():
            new = node_id not in self.peers
            peer = self._trust(spec)
            if new and peer is not None and self._nursery is not None:
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
                nursery.start_soon(self._watch_models)
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
                nursery.start_soon(self._serve_stream, conn, remote, stream)

    async def _serve_stream(self, conn: Connection, remote: NodeId, stream: QuicStream) -> None:
        reader = PreambleReader()
        try:
            with trio.fail_after(_PREAMBLE_TIMEOUT):
                # One read usually holds the preamble and the first frames: fewer calls
                # into iroh. What follows the preamble is handed on as `trailing`.
                while (
                    preamble := reader.receive_data(await stream.receive_some(65536))
                ) is NEED_DATA:
                    pass
        except ProtocolError as exc:  # spec §3.5: one bare error frame, then close
            await _reject(stream, exc.code, str(exc))
            return
        except (trio.TooSlowError, TransportError, trio.BrokenResourceError):
            await close_quietly(stream)
            return
        assert isinstance(preamble, Preamble)
        kind = preamble.stream_type
        if kind is StreamType.NODE_CONTROL:
            await self._control_responder(conn, remote, stream, reader.trailing_data)
        elif kind is StreamType.HTTP_PROXY:
            if not self.trusted(remote):
                log.warning("refused a request from an untrusted node", extra={"peer": str(remote)})
                await _reject(stream, ErrorCode.UNAUTHORIZED, "this node does not trust you")
                return
            await serve_http_stream(
                stream, self._app(), peer=str(remote), trailing=reader.trailing_data
            )
        else:
            await _reject(
                stream,
                ErrorCode.UNKNOWN_STREAM_TYPE,
                f"this node does not serve {kind.value} streams",
            )

    async def _control_responder(
        self, conn: Connection, remote: NodeId, stream: QuicStream, trailing: bytes
    ) -> None:
        control = ControlStream(stream, Role.RESPONDER)
        if trailing:
            control.channel.receive_data(trailing)
        try:
            with trio.fail_after(_PREAMBLE_TIMEOUT):
                first = await control.receive()
            if first is None or not isinstance(first.payload, Handshake):
                return
            hello = first.payload
            version = negotiate_version(hello.versions, SUPPORTED_VERSIONS)
            reason = None
            if hello.node_id != str(remote):  # spec §5.4 MUST
                reason = "handshake node id differs from the authenticated one"
            elif not self.trusted(remote):
                reason = f"node {remote} is not a trusted peer of {self.node_id}"
            elif version is None:
                reason = f"no common protocol version (this node speaks {SUPPORTED_VERSIONS})"
            if reason is not None:
                log.warning("refused a handshake", extra={"peer": str(remote), "reason": reason})
                await control.send(
                    HandshakeResponse(node_id=str(self.node_id), accepted=False, reason=reason),
                    reply_to=first.id,
                )
                await trio.sleep(0.2)  # let the refusal reach the peer before closing
                conn.close(int(ErrorCode.UNAUTHORIZED), reason[:100])
                return
            await control.send(
                HandshakeResponse(
                    node_id=str(self.node_id),
                    accepted=True,
                    version=version,
                    capabilities=self._local_capabilities(),
                ),
                reply_to=first.id,
            )
            if hello.capabilities is not None:
                self._note_capabilities(remote, hello.capabilities)
            interval = self.config.heartbeat_interval
            while True:
                with trio.fail_after(interval * 3):  # the dialer pings every interval
                    message = await control.receive()
                if message is None:
                    return
                payload = message.payload
                if isinstance(payload, Ping):
                    await control.send(Pong(nonce=payload.nonce), reply_to=message.id)
                elif isinstance(payload, CapabilityRequest):
                    await control.send(
                        CapabilityResponse(capabilities=self._local_capabilities()),
                        reply_to=message.id,
                    )
                elif isinstance(payload, CapabilityResponse):
                    self._note_capabilities(remote, payload.capabilities)
        except ProtocolError as exc:
            with trio.move_on_after(1, shield=True):
                with contextlib.suppress(ProtocolError, TransportError, trio.BrokenResourceError):
                    await control.send(NodeError(code=exc.code, message=str(exc)[:200]))
        except (trio.TooSlowError, TransportError, trio.BrokenResourceError):
            pass
        finally:
            await close_quietly(stream)

    async def _watch_models(self) -> None:
        """Notice when this node's models change (an engine came, went or was added)."""
        models = _model_set(self._local_capabilities())
        while True:
            await trio.sleep(_MODELS_POLL_INTERVAL)
            now = _model_set(self._local_capabilities())
            if now != models:
                models = now
                self._models_version += 1
                self._wake_heartbeats()

    def _wake_heartbeats(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    def _note_capabilities(self, remote: NodeId, capabilities: Capabilities) -> None:
        peer = self.peers.get(remote)
        if peer is not None and capabilities.node_id == str(remote):
            peer.capabilities = capabilities

    # --- dialing -----------------------------------------------------------------

    async def _maintain(self, peer: PeerState) -> None:
        with trio.CancelScope() as scope:
            self._maintainers[peer.node_id] = scope
            attempt = 0
            while self.peers.get(peer.node_id) is peer:
                attempt += 1
                self._set_status(peer, Connecting(attempt=attempt))
                reason = ""  # why the connection is dropped: its streams' errors say it
                try:
                    await self._session(peer, attempt)
                    attempt = 0  # a session that got connected resets the backoff
                except _Refused as exc:
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
                        peer.connection.close(0, reason)
                    peer.connection = None
                delay = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2 ** min(attempt, 6))
                await trio.sleep(delay * self._rng.uniform(0.5, 1.0))  # jittered
        self._maintainers.pop(peer.node_id, None)

    async def _session(self, peer: PeerState, attempt: int) -> None:
        assert self.endpoint is not None
        with trio.fail_after(_CONNECT_TIMEOUT):
            conn = await self.endpoint.connect(peer.node_id, peer.addresses)
            peer.connection = conn
            stream = await conn.open_stream()
            await stream.send_all(encode_preamble(StreamType.NODE_CONTROL))
            control = ControlStream(stream, Role.INITIATOR)
            await control.send(
                Handshake(
                    node_id=str(self.node_id),
                    versions=list(SUPPORTED_VERSIONS),
                    agent=f"gate/{__version__}",
                    capabilities=self._local_capabilities(),
                )
            )
            answer = await control.receive()
        if answer is None or not isinstance(answer.payload, HandshakeResponse):
            raise _Refused("the peer closed the control stream during the handshake")
        if not answer.payload.accepted:
            raise _Refused(answer.payload.reason or "handshake refused")
        if answer.payload.node_id != str(peer.node_id):
            raise _Refused("the peer's handshake names another node")
        if answer.payload.capabilities is not None:
            self._note_capabilities(peer.node_id, answer.payload.capabilities)
        self._set_status(peer, Connected(since_ms=_now_ms()))
        peer.last_seen_ms = _now_ms()
        self._save_cache()
        log.info(
            "peer connected", extra={"peer": str(peer.node_id), "models": sorted(peer.models())}
        )
        await self._heartbeat(peer, control)

    async def _heartbeat(self, peer: PeerState, control: ControlStream) -> None:
        nonce = 0
        models_told = self._models_version
        while True:
            nonce += 1
            sent = trio.current_time()
            await control.send(Ping(nonce=nonce))
            if nonce % 4 == 1:  # models may change: ask now and then
                await control.send(CapabilityRequest())
            await self._await_pong(peer, control, nonce, sent)
            peer.last_seen_ms = _now_ms()
            # Wait for the next ping, which comes sooner once requests to the peer start;
            # if this node's models change meanwhile, tell the peer now (an unasked
            # capability_response, spec §5.5).
            while trio.current_time() < sent + self._ping_interval(peer):
                wake = self._wake
                with trio.move_on_at(sent + self._ping_interval(peer)):
                    await wake.wait()
                if models_told != self._models_version:
                    models_told = self._models_version
                    await control.send(CapabilityResponse(capabilities=self._local_capabilities()))

    async def _await_pong(
        self, peer: PeerState, control: ControlStream, nonce: int, sent: float
    ) -> None:
        """Read the control stream up to the Pong for `nonce`; TransportError once it is late.

        How late is too late changes when requests to the peer start, so a late Pong is
        checked for again at least every _BUSY_PONG_TIMEOUT (rare: a Pong takes one
        round trip, unless the peer is dead or stalled)."""
        while (now := trio.current_time()) < (deadline := sent + self._pong_timeout(peer)):
            with trio.move_on_at(min(deadline, now + _BUSY_PONG_TIMEOUT)):
                while True:
                    message = await control.receive()
                    if message is None:
                        raise TransportError("the peer closed the control stream")
                    if isinstance(message.payload, Pong) and message.payload.nonce == nonce:
                        return
                    if isinstance(message.payload, CapabilityResponse):
                        self._note_capabilities(peer.node_id, message.payload.capabilities)
        raise TransportError(f"no pong within {deadline - sent:g}s of a ping")

    def _ping_interval(self, peer: PeerState) -> float:
        interval = self.config.heartbeat_interval
        return min(interval, _BUSY_PING_INTERVAL) if peer.in_flight else interval

    def _pong_timeout(self, peer: PeerState) -> float:
        limit = self.config.heartbeat_interval * 3
        return min(limit, _BUSY_PONG_TIMEOUT) if peer.in_flight else limit

    def _set_status(self, peer: PeerState, status: ConnectionStatus) -> None:
        peer.status = status
        if self._events is not None:
            self._events.publish(
                "peer", {"node_id": str(peer.node_id), "status": msgspec.to_builtins(status)}
            )

    # --- used by the gateway -----------------------------------------------------

    def peer(self, node_id: NodeId) -> PeerState | None:
        return self.peers.get(node_id)

    def peers_serving(self, model: str) -> list[PeerState]:
        """Connected peers that advertise `model`, lowest load_factor first."""
        found = [p for p in self.peers.values() if p.connected and model in p.models()]
        return sorted(found, key=lambda p: (p.load, p.in_flight))

    def peer_models(self) -> dict[str, list[str]]:
        models: dict[str, list[str]] = {}
        for peer in self.peers.values():
            if peer.connected:
                for model in peer.models():
                    models.setdefault(model, []).append(f"peer:{peer.node_id}")
        return models

    @contextlib.contextmanager
    def request_to(self, peer: PeerState) -> Iterator[None]:
        """Count a request to `peer` while it runs. The first one quickens the peer's
        heartbeat at once (see _BUSY_PING_INTERVAL), not at its next ping."""
        peer.in_flight += 1
        if peer.in_flight == 1:
            self._wake_heartbeats()
        try:
            yield
        finally:
            peer.in_flight -= 1

    async def open_http_stream(self, peer: PeerState) -> QuicStream:
        if peer.connection is None:
            raise TransportError(f"peer {peer.node_id} is not connected")
        return await peer.connection.open_stream()

    # --- peers.json --------------------------------------------------------------

    def _load_cache(self) -> dict[str, Any]:
        try:
            data = json.loads(self._cache_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_cache(self) -> None:
        data = {str(p.node_id): msgspec.to_builtins(p.info()) for p in self.peers.values()}
        try:
            write_secret_file_atomic(self._cache_path, json.dumps(data, indent=2).encode())
        except OSError as exc:
            log.warning("cannot write peers cache", extra={"error": str(exc)})


class _Refused(Exception):
    """The peer answered the handshake with a refusal (or nonsense)."""


async def _reject(stream: QuicStream, code: int, message: str) -> None:
    """spec §3.5: a bare error object as the only frame, then the stream is closed."""
    with trio.move_on_after(1, shield=True):
        try:
            await stream.send_all(
                encode_frame(_encode(StreamError(code=code, message=message[:200])))
            )
            await stream.send_eof()
        except (TransportError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await close_quietly(stream)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _model_set(capabilities: Capabilities) -> frozenset[tuple[str, str | None]]:
    return frozenset((m.id, m.provider) for m in capabilities.supported_models)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _public_key(secret_key: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(secret_key)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
