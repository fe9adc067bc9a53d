"""NodeControl sessions (spec §5): the handshake from either side, the heartbeat, and
capabilities both ways.

- Responder (`NodeControl.respond`, the NodeControl row of the dispatch table): the
  claimed node id must be the authenticated one and a trusted peer, and a version must be
  shared, else the answer is a refusal with the reason; no other stream of that
  connection is served, and the connection is closed once the dialer has read the
  refusal (§5.4, §2.3). Then it answers Pings and capability requests until the dialer
  stops; a dialer silent for a minute (§5.5: no node may enforce less) gets error
  TIMEOUT and its connection is closed, which ends the session on both sides.
- Initiator (`NodeControl.handshake`, then `NodeControl.heartbeat`): handshake
  (learning the peer's capabilities), then a Ping every `heartbeat_interval` (at most
  every 20 s, §5.5); a Pong missing for three intervals ends the session
  (TransportError). While requests to the
  peer are in flight the heartbeat quickens (a Ping every second, a Pong more than four
  seconds late means the peer is gone), so a stream from a peer that died mid-answer ends
  within seconds: iroh's Python binding does not expose QUIC's keep-alive or idle
  timeout, and on its own the connection notices only after 30 s. Capabilities are asked
  for every fourth ping, and pushed to the peer within about half a second when this
  node's models change (an unasked capability_response, §5.5).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import trio

from gate import __version__
from gate.protocol import (
    EOF,
    NODE_CONTROL,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Capabilities,
    CapabilityRequest,
    CapabilityResponse,
    Channel,
    ErrorCode,
    Handshake,
    HandshakeResponse,
    NodeError,
    NodeId,
    NodeMessage,
    Ping,
    Pong,
    ProtocolError,
    Role,
    StreamType,
    encode_preamble,
    negotiate_version,
)
from gate.services.p2p.dispatch import IncomingStream
from gate.services.p2p.peers import PeerState, TrustedPeers
from gate.services.transport.framed import close_quietly, receive_event
from gate.services.transport.quic import Connection, QuicStream, TransportError

__all__ = ["ControlStream", "NodeControl", "Refused"]

_HANDSHAKE_TIMEOUT: Final = 10.0  # for the responder, from the stream's preamble on
_MODELS_POLL_INTERVAL: Final = 0.5  # how soon a change of this node's models reaches peers
# While requests to a peer are in flight: a Ping every _BUSY_PING_INTERVAL, and a peer
# whose Pong is _BUSY_PONG_TIMEOUT late is taken for dead (its connection is closed,
# which ends every stream on it). A live peer answers Pings whatever its engine does, so
# an engine slow to produce the next token never ends a stream; the timeout leaves room
# for a lost packet to be sent again on a slow path. Idle peers keep the configured pace.
_BUSY_PING_INTERVAL: Final = 1.0
_BUSY_PONG_TIMEOUT: Final = 4.0
# spec §5.5: the dialer sends something at least every 20 s, and no node may end a
# channel for less than 60 s of silence, so a peer that only answers pings keeps it.
_MAX_PING_INTERVAL: Final = 20.0
_MIN_SILENCE_LIMIT: Final = 60.0
# spec §2.3: how long a refusal or a TIMEOUT error may take to be read before the
# connection is closed (closing at once could discard it).
_CLOSE_GRACE: Final = 5.0

log = logging.getLogger("gate.p2p")


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


class Refused(Exception):
    """The peer answered the handshake with a refusal (or nonsense)."""


class NodeControl:
    """This node's NodeControl sessions with its trusted peers, both sides."""

    def __init__(
        self,
        node_id: NodeId,
        peers: TrustedPeers,
        *,
        local_capabilities: Callable[[], Capabilities],
        heartbeat_interval: Callable[[], float],  # read at each use: reload changes it
    ) -> None:
        self.node_id = node_id
        self._peers = peers
        self._local_capabilities = local_capabilities
        self._heartbeat_interval = heartbeat_interval
        # Bumped when this node's models change: each session then pushes its
        # capabilities to the peer at once (spec §5.5) instead of at the next ask.
        self._models_version = 0
        # Set (and replaced) to wake the heartbeats: models changed, or a peer got busy.
        self._wake = trio.Event()

    # --- responder ---------------------------------------------------------------

    async def respond(self, incoming: IncomingStream) -> None:
        conn, remote, stream = incoming.conn, incoming.remote, incoming.stream
        control = ControlStream(stream, Role.RESPONDER)
        if incoming.trailing:
            control.channel.receive_data(incoming.trailing)
        try:
            with trio.fail_after(_HANDSHAKE_TIMEOUT):
                first = await control.receive()
            if first is None or not isinstance(first.payload, Handshake):
                return
            hello = first.payload
            version = negotiate_version(hello.versions, SUPPORTED_VERSIONS)
            reason = None
            if hello.node_id != str(remote):  # spec §5.4 MUST
                reason = "handshake node id differs from the authenticated one"
            elif not self._peers.trusted(remote):
                reason = f"node {remote} is not a trusted peer of {self.node_id}"
            elif version is None:
                reason = f"no common protocol version (this node speaks {SUPPORTED_VERSIONS})"
            if reason is not None:
                log.warning("refused a handshake", extra={"peer": str(remote), "reason": reason})
                incoming.refuse_connection()  # §5.4: no other stream of it is served
                await control.send(
                    HandshakeResponse(node_id=str(self.node_id), accepted=False, reason=reason),
                    reply_to=first.id,
                )
                await _close_after_read(conn, stream, ErrorCode.UNAUTHORIZED, reason)
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
                self.note_capabilities(remote, hello.capabilities)
            while True:
                silence = max(_MIN_SILENCE_LIMIT, 3 * self._heartbeat_interval())
                with trio.move_on_after(silence) as waiting:
                    message = await control.receive()
                if waiting.cancelled_caught:  # §5.5: the session ends, for both sides
                    log.info("peer silent; ending its session", extra={"peer": str(remote)})
                    await control.send(
                        NodeError(code=ErrorCode.TIMEOUT, message=f"silent for {silence:g}s")
                    )
                    await _close_after_read(conn, stream, ErrorCode.TIMEOUT, "peer silent")
                    return
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
                    self.note_capabilities(remote, payload.capabilities)
        except ProtocolError as exc:
            with trio.move_on_after(1, shield=True):
                with contextlib.suppress(ProtocolError, TransportError, trio.BrokenResourceError):
                    await control.send(NodeError(code=exc.code, message=str(exc)[:200]))
        except (trio.TooSlowError, TransportError, trio.BrokenResourceError):
            pass
        finally:
            await close_quietly(stream)

    # --- initiator ---------------------------------------------------------------

    async def handshake(self, conn: Connection, peer: PeerState) -> ControlStream:
        """Open the NodeControl stream on `conn` and be accepted by `peer` (Refused if
        not); the caller bounds the time it takes."""
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
            raise Refused("the peer closed the control stream during the handshake")
        if not answer.payload.accepted:
            raise Refused(answer.payload.reason or "handshake refused")
        if answer.payload.node_id != str(peer.node_id):
            raise Refused("the peer's handshake names another node")
        if answer.payload.capabilities is not None:
            self.note_capabilities(peer.node_id, answer.payload.capabilities)
        return control

    async def heartbeat(self, peer: PeerState, control: ControlStream) -> None:
        """Ping `peer` until it stops answering (TransportError) or the caller cancels."""
        nonce = 0
        models_told = self._models_version
        while True:
            nonce += 1
            sent = trio.current_time()
            await control.send(Ping(nonce=nonce))
            if nonce % 4 == 1:  # models may change: ask now and then
                await control.send(CapabilityRequest())
            await self._await_pong(peer, control, nonce, sent)
            peer.last_seen_ms = int(time.time() * 1000)
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
                        self.note_capabilities(peer.node_id, message.payload.capabilities)
        raise TransportError(f"no pong within {deadline - sent:g}s of a ping")

    def _ping_interval(self, peer: PeerState) -> float:
        interval = min(self._heartbeat_interval(), _MAX_PING_INTERVAL)
        return min(interval, _BUSY_PING_INTERVAL) if peer.in_flight else interval

    def _pong_timeout(self, peer: PeerState) -> float:
        limit = min(self._heartbeat_interval(), _MAX_PING_INTERVAL) * 3
        return min(limit, _BUSY_PONG_TIMEOUT) if peer.in_flight else limit

    # --- capabilities ------------------------------------------------------------

    async def watch_models(self) -> None:
        """Notice when this node's models change (an engine came, went or was added)."""
        models = _model_set(self._local_capabilities())
        while True:
            await trio.sleep(_MODELS_POLL_INTERVAL)
            now = _model_set(self._local_capabilities())
            if now != models:
                models = now
                self._models_version += 1
                self.wake_heartbeats()

    def wake_heartbeats(self) -> None:
        """Have every heartbeat look again now (at its interval and this node's models)."""
        self._wake.set()
        self._wake = trio.Event()

    def note_capabilities(self, remote: NodeId, capabilities: Capabilities) -> None:
        peer = self._peers.get(remote)
        if peer is not None and capabilities.node_id == str(remote):
            peer.capabilities = capabilities


async def _close_after_read(conn: Connection, stream: QuicStream, code: int, reason: str) -> None:
    """Finish `stream`, whose last frame the peer must read, then close `conn` with
    `code` once the peer has closed it or finished its half (it does either only after
    reading), or after _CLOSE_GRACE: spec §2.3, CONNECTION_CLOSE would drop unread data."""
    gone = (TransportError, trio.BrokenResourceError, trio.ClosedResourceError)
    with trio.move_on_after(_CLOSE_GRACE), contextlib.suppress(*gone):
        await stream.send_eof()
        while await stream.receive_some(4096):
            pass
    conn.close(int(code), reason[:100])


def _model_set(capabilities: Capabilities) -> frozenset[tuple[str, str | None]]:
    return frozenset((m.id, m.provider) for m in capabilities.supported_models)
