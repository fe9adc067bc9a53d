"""The state machines of Gate's framed streams, as transition tables (spec §5-§7).

Theory of operation
-------------------
A `Channel` is one end of one framed stream, h11-style: it does no IO. The caller
feeds it received bytes with `receive_data()` and pulls decoded messages with
`next_event()`; to send, it passes a message to `send()` and writes the bytes that
come back. Both directions pass through the same table, so a peer that sends a
message out of turn gets RemoteProtocolError(UNEXPECTED_MESSAGE), and our own code
trying to do so gets LocalProtocolError before anything reaches the wire.

A table maps (state, sender role, event) to the next state; a triple that is not in
the table is a protocol error — there is no other code path that allows a message.
The event is the message's tag, refined where the payload changes what may follow
(a HandshakeResponse is `handshake_accepted` or `handshake_refused`).

Roles: the INITIATOR opened the stream (and sent the preamble); the RESPONDER
accepted it. Both ends track the same state, so one state describes the channel.
HttpProxy's state is the pair (request side, response side), because a request body
and its response may flow at the same time; its table is the product of two
half-tables, built below so that every pair is still listed explicitly.
"""

from __future__ import annotations

import enum
import functools
import itertools
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import msgspec

from gate.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from gate.protocol.framing import DEFAULT_MAX_FRAME_SIZE, EOF, NEED_DATA, FrameDecoder, Sentinel
from gate.protocol.framing import encode_frame as _encode_frame
from gate.protocol.messages import HandshakeResponse, NodeMessage, RelayMessage
from gate.protocol.proxy import HttpFrame, StreamError

__all__ = [
    "HTTP_PROXY",
    "NODE_CONTROL",
    "RELAY_CONTROL",
    "Channel",
    "ChannelSpec",
    "Role",
    "negotiate_version",
]

M = TypeVar("M")
State = Hashable


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"

    @property
    def other(self) -> Role:
        return Role.RESPONDER if self is Role.INITIATOR else Role.INITIATOR


I, R = Role.INITIATOR, Role.RESPONDER  # noqa: E741  (the tables read better short)
Table = Mapping[tuple[State, Role, str], State]


@dataclass(frozen=True)
class ChannelSpec(Generic[M]):
    """Everything that makes one kind of stream: its message type and its table."""

    name: str
    message_type: Any  # the msgspec type decoded from each frame
    initial: State
    table: Table
    classify: Callable[[M], str]
    #: (state, sender) pairs in which that sender may end its side of the stream.
    may_finish: frozenset[tuple[State, Role]]
    terminal: frozenset[State]

    @property
    def events(self) -> frozenset[str]:
        return frozenset(event for (_, _, event) in self.table)

    @property
    def states(self) -> frozenset[State]:
        return frozenset(
            itertools.chain((s for (s, _, _) in self.table), self.table.values(), [self.initial])
        )


def _tag(message: msgspec.Struct) -> str:
    return str(type(message).__struct_config__.tag)


# --- NodeControl (spec §5.2) ------------------------------------------------


class NodeState(enum.Enum):
    AWAIT_HANDSHAKE = "await_handshake"
    AWAIT_RESPONSE = "await_response"
    ESTABLISHED = "established"
    CLOSED = "closed"


def _classify_node(message: NodeMessage) -> str:
    payload = message.payload
    if isinstance(payload, HandshakeResponse):
        return "handshake_accepted" if payload.accepted else "handshake_refused"
    return _tag(payload)


_N = NodeState
_NODE_TABLE: Final[Table] = {
    (_N.AWAIT_HANDSHAKE, I, "handshake"): _N.AWAIT_RESPONSE,
    (_N.AWAIT_HANDSHAKE, I, "error"): _N.CLOSED,
    (_N.AWAIT_HANDSHAKE, R, "error"): _N.CLOSED,
    (_N.AWAIT_RESPONSE, R, "handshake_accepted"): _N.ESTABLISHED,
    (_N.AWAIT_RESPONSE, R, "handshake_refused"): _N.CLOSED,
    (_N.AWAIT_RESPONSE, I, "error"): _N.CLOSED,
    (_N.AWAIT_RESPONSE, R, "error"): _N.CLOSED,
    **{
        (_N.ESTABLISHED, role, event): _N.ESTABLISHED
        for role in Role
        for event in ("ping", "pong", "capability_request", "capability_response")
    },
    (_N.ESTABLISHED, I, "error"): _N.CLOSED,
    (_N.ESTABLISHED, R, "error"): _N.CLOSED,
}

NODE_CONTROL: Final[ChannelSpec[NodeMessage]] = ChannelSpec(
    name="node_control",
    message_type=NodeMessage,
    initial=_N.AWAIT_HANDSHAKE,
    table=_NODE_TABLE,
    classify=_classify_node,
    # Either side may close an established control stream (the connection is going away).
    may_finish=frozenset(
        {(_N.ESTABLISHED, I), (_N.ESTABLISHED, R), (_N.CLOSED, I), (_N.CLOSED, R)}
    ),
    terminal=frozenset({_N.CLOSED}),
)


# --- RelayControl (spec §6.2): the node asks, the relay answers, one at a time -----


class RelayState(enum.Enum):
    IDLE = "idle"
    AWAIT_DOMAIN = "await_domain"
    AWAIT_DNS = "await_dns"
    AWAIT_ACTIVATION = "await_activation"
    CLOSED = "closed"


_R = RelayState
_RELAY_REQUESTS: Final = {
    "domain_request": (_R.AWAIT_DOMAIN, "domain_response"),
    "dns_challenge": (_R.AWAIT_DNS, "dns_challenge_response"),
    "activate_domain": (_R.AWAIT_ACTIVATION, "activation_response"),
}
_RELAY_TABLE: Final[Table] = {
    **{(_R.IDLE, I, req): waiting for req, (waiting, _) in _RELAY_REQUESTS.items()},
    **{(waiting, R, resp): _R.IDLE for waiting, resp in _RELAY_REQUESTS.values()},
    # The relay refusing one request fails that request, not the stream.
    **{(waiting, R, "error"): _R.IDLE for waiting, _ in _RELAY_REQUESTS.values()},
    **{(waiting, I, "error"): _R.CLOSED for waiting, _ in _RELAY_REQUESTS.values()},
    (_R.IDLE, I, "error"): _R.CLOSED,
    (_R.IDLE, R, "error"): _R.CLOSED,
}

RELAY_CONTROL: Final[ChannelSpec[RelayMessage]] = ChannelSpec(
    name="relay_control",
    message_type=RelayMessage,
    initial=_R.IDLE,
    table=_RELAY_TABLE,
    classify=lambda message: _tag(message.payload),
    may_finish=frozenset({(_R.IDLE, I), (_R.IDLE, R), (_R.CLOSED, I), (_R.CLOSED, R)}),
    terminal=frozenset({_R.CLOSED}),
)


# --- HttpProxy (spec §7.2) --------------------------------------------------


class HttpProxyHalfState(enum.Enum):
    """How far one half of an HttpProxy exchange (the request, sent by the initiator, or
    the response, sent by the responder) has got (spec §7.2)."""

    HEAD = "head"  # nothing sent yet on this side
    BODY = "body"  # head sent, body chunks may follow
    DONE = "done"  # End sent
    FAILED = "failed"  # StreamError sent or received


_H = HttpProxyHalfState
# Each half-table: (half state, event) -> half state, for the side that sends.
_REQUEST_HALF: Final = {
    (_H.HEAD, "request_head"): _H.BODY,
    (_H.BODY, "body"): _H.BODY,
    (_H.BODY, "end"): _H.DONE,
}
_RESPONSE_HALF: Final = {
    (_H.HEAD, "response_head"): _H.BODY,
    (_H.BODY, "body"): _H.BODY,
    (_H.BODY, "end"): _H.DONE,
}


def _build_http_table() -> Table:
    table: dict[tuple[State, Role, str], State] = {}
    halves = list(HttpProxyHalfState)
    for req, resp in itertools.product(halves, halves):
        if _H.FAILED in (req, resp):
            continue  # an error ends both directions: nothing follows it
        for (half, event), after in _REQUEST_HALF.items():
            if half is req:
                table[((req, resp), I, event)] = (after, resp)
        for (half, event), after in _RESPONSE_HALF.items():
            # A response may start before the request body ends (an early 413),
            # but never before the request head.
            if half is resp and req is not _H.HEAD:
                table[((req, resp), R, event)] = (req, after)
        if resp is not _H.DONE:
            # The requester cancels; the responder fails the request.
            table[((req, resp), I, "error")] = (_H.FAILED, _H.FAILED)
            table[((req, resp), R, "error")] = (_H.FAILED, _H.FAILED)
    return table


HTTP_PROXY: Final[ChannelSpec[HttpFrame]] = ChannelSpec(
    name="http_proxy",
    message_type=HttpFrame,
    initial=(_H.HEAD, _H.HEAD),
    table=_build_http_table(),
    classify=_tag,
    may_finish=frozenset(
        {((_H.DONE, resp), I) for resp in HttpProxyHalfState}
        | {((req, _H.DONE), R) for req in HttpProxyHalfState}
        | {((_H.FAILED, _H.FAILED), role) for role in Role}
    ),
    terminal=frozenset({(_H.DONE, _H.DONE), (_H.FAILED, _H.FAILED)}),
)

# --- The channel -------------------------------------------------------------

_decode_bare_error = msgspec.msgpack.Decoder(StreamError).decode
# Shared by every channel: msgspec encoders and decoders are reusable and building a
# decoder for a tagged union costs more than a whole small exchange.
_ENCODER: Final = msgspec.msgpack.Encoder()


@functools.cache
def _message_decoder(message_type: Any) -> Callable[[bytes], Any]:
    return msgspec.msgpack.Decoder(message_type).decode


def negotiate_version(offered: list[int], supported: tuple[int, ...]) -> int | None:
    """spec §3.2: the highest version both sides speak, or None if they share none."""
    common = set(offered) & set(supported)
    return max(common) if common else None


class Channel(Generic[M]):
    """One end of a framed stream: validates every message against the spec's table."""

    def __init__(
        self,
        spec: ChannelSpec[M],
        role: Role,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.spec = spec
        self.role = role
        self.state: State = spec.initial
        self._decoder = FrameDecoder(max_frame_size)
        self._encoder = _ENCODER
        self._decode = _message_decoder(spec.message_type)
        self._finished: set[Role] = set()
        self._discard_incoming = False

    @property
    def max_frame_size(self) -> int:
        return self._decoder.max_frame_size

    @property
    def closed(self) -> bool:
        return self.state in self.spec.terminal

    def send(self, message: M) -> bytes:
        """Check that we may send `message` now; return the frame to write."""
        event = self.spec.classify(message)
        next_state = self._next_state(self.role, event, LocalProtocolError)
        # Encode before committing the transition: a frame too large to send must not
        # leave the channel believing it was sent.
        frame = _encode_frame(self._encoder.encode(message), self.max_frame_size)
        self.state = next_state
        if event == "error" and next_state in self.spec.terminal:
            self._discard_incoming = True
        return frame

    def send_finish(self) -> None:
        """Record that we end our side of the stream (the caller then closes its send half)."""
        if (self.state, self.role) not in self.spec.may_finish:
            raise LocalProtocolError(
                f"{self.spec.name}: cannot finish in state {_name(self.state)}",
                ErrorCode.UNEXPECTED_MESSAGE,
            )
        self._finished.add(self.role)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; b"" means the peer finished its side."""
        self._decoder.receive_data(data)

    def next_event(self) -> M | Sentinel:
        """The next complete message from the peer, NEED_DATA, or EOF once it finished."""
        peer = self.role.other
        while True:
            frame = self._decoder.next_frame()
            if frame is NEED_DATA:
                return NEED_DATA
            if frame is EOF:
                if not self._discard_incoming and (self.state, peer) not in self.spec.may_finish:
                    raise RemoteProtocolError(  # spec §4.3 MUST
                        f"{self.spec.name}: peer ended the stream in state {_name(self.state)}",
                        ErrorCode.TRUNCATED,
                    )
                self._finished.add(peer)
                return EOF
            if self._discard_incoming:
                # spec §4.3 SHOULD: after we ended the stream with an error, frames the
                # peer sent before it saw ours are still arriving; they are not errors.
                continue
            assert isinstance(frame, bytes)
            message = self._decode_message(frame)
            self.state = self._next_state(peer, self.spec.classify(message), RemoteProtocolError)
            return message

    def _decode_message(self, frame: bytes) -> M:
        try:
            message: M = self._decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            try:  # spec §3.5: a peer that rejected the stream sends a bare error object
                rejection = _decode_bare_error(frame)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
                raise RemoteProtocolError(  # spec §4.2 MUST
                    f"{self.spec.name}: invalid message: {exc}", ErrorCode.INVALID_MESSAGE
                ) from None
            raise RemoteProtocolError(
                f"{self.spec.name}: peer rejected the stream: {rejection.message}",
                rejection.code,
            ) from None
        return message

    def _next_state(
        self, sender: Role, event: str, error: type[LocalProtocolError | RemoteProtocolError]
    ) -> State:
        if sender in self._finished:
            raise error(
                f"{self.spec.name}: {sender.value} already finished its side",
                ErrorCode.UNEXPECTED_MESSAGE,
            )
        next_state = self.spec.table.get((self.state, sender, event))
        if next_state is None:
            raise error(
                f"{self.spec.name}: {sender.value} may not send {event!r} in state "
                f"{_name(self.state)}",
                ErrorCode.UNEXPECTED_MESSAGE,
            )
        return next_state


def _name(state: State) -> str:
    if isinstance(state, tuple):
        return "(" + ", ".join(_name(s) for s in state) + ")"
    return str(state.value) if isinstance(state, enum.Enum) else str(state)
