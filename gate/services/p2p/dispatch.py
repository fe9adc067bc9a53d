"""Incoming streams by type: the preamble says what a stream carries (spec §3.1), and a
table says, for each stream type this node serves, who may open it and what serves it.

A known type not in the table is refused with STREAM_TYPE_NOT_SERVED (§3.3: the code
is known, this node does not serve it; an unknown code is UNKNOWN_STREAM_TYPE, from the
preamble reader); a stream from a node its row does not admit is refused with
UNAUTHORIZED. Either refusal is one bare error frame, then the stream is closed (§3.5).
A relay's table has the one row relay_control (gate.services.relay); a node's tls_proxy
row admits only the relays it registered with (gate.services.p2p.relay_client). A
handler that raises resets its own stream with INTERNAL and is logged; the service
that accepts streams goes on.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec
import trio

from gate.protocol import (
    NEED_DATA,
    ErrorCode,
    NodeId,
    Preamble,
    PreambleReader,
    ProtocolError,
    StreamError,
    StreamType,
    encode_frame,
)
from gate.services.http.router import ASGIApp
from gate.services.p2p.http_over_stream import serve_http_stream
from gate.services.transport.framed import READ_SIZE, close_quietly
from gate.services.transport.quic import Connection, QuicStream, TransportError

__all__ = [
    "IncomingStream",
    "Opener",
    "Route",
    "StreamDispatch",
    "StreamHandler",
    "node_streams",
    "reject",
]

log = logging.getLogger("gate.p2p")
# How a stream that is already gone answers a last write or reset.
_GONE: Final = (TransportError, trio.BrokenResourceError, trio.ClosedResourceError)

PREAMBLE_TIMEOUT: Final = 10.0
_encode = msgspec.msgpack.Encoder().encode


class Opener(enum.Enum):
    """Who may open a stream type on this node."""

    ANY_NODE = "any node"  # any node the transport authenticated (every connection, §2.2)
    TRUSTED_PEER = "a trusted peer"  # a node in p2p.trusted_peers (§5.4)
    REGISTERED_RELAY = "a relay this node registered with"  # §7.4


@dataclass(frozen=True)
class IncomingStream:
    """A stream a node opened to this one, its preamble read."""

    conn: Connection
    remote: NodeId  # the NodeId the transport authenticated
    stream: QuicStream
    trailing: bytes  # what arrived after the preamble: the start of the body
    # Called when this node refuses the peer's handshake on `conn`: from then on every
    # other stream of that connection is refused (spec §5.4).
    refuse_connection: Callable[[], None] = lambda: None


StreamHandler = Callable[[IncomingStream], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    opener: Opener
    handler: StreamHandler


def node_streams(
    *,
    control: StreamHandler,
    app: Callable[[], ASGIApp],
    tls: StreamHandler | None = None,
) -> dict[StreamType, Route]:
    """The stream types a node serves: NodeControl sessions with `control`, HttpProxy
    requests through this node's own API (`app()` at each request), and with `tls` (the
    relay door, gate.services.p2p.tls_proxy) a relay's TlsProxy streams."""

    async def http_proxy(incoming: IncomingStream) -> None:
        await serve_http_stream(
            incoming.stream, app(), peer=str(incoming.remote), trailing=incoming.trailing
        )

    routes = {
        # §5.4: the handshake on it is where trust is checked, and a refusal says why
        # (HandshakeResponse.reason), so any node may open one.
        StreamType.NODE_CONTROL: Route(Opener.ANY_NODE, control),
        # §5.4: a node MUST NOT serve an http_proxy stream from a peer it does not
        # trust; nothing of such a stream reaches an engine.
        StreamType.HTTP_PROXY: Route(Opener.TRUSTED_PEER, http_proxy),
        # relay_control (§6) is a relay's to serve (§3.3).
    }
    if tls is not None:
        # §7.4 says SHOULD; here only a relay this node registered with may open one.
        routes[StreamType.TLS_PROXY] = Route(Opener.REGISTERED_RELAY, tls)
    return routes


class StreamDispatch:
    """Reads each incoming stream's preamble and hands the stream to its route."""

    def __init__(
        self,
        routes: Mapping[StreamType, Route],
        *,
        trusted: Callable[[NodeId], bool],
        relay: Callable[[NodeId], bool] = lambda _: False,
    ) -> None:
        self.routes = routes
        self._trusted = trusted
        self._relay = relay
        # Connections whose handshake this node refused (spec §5.4), until they go.
        self._refused: weakref.WeakSet[Connection] = weakref.WeakSet()

    def admits(self, opener: Opener, remote: NodeId) -> bool:
        if opener is Opener.TRUSTED_PEER:
            return self._trusted(remote)
        if opener is Opener.REGISTERED_RELAY:
            return self._relay(remote)
        return True

    async def serve(self, conn: Connection, remote: NodeId, stream: QuicStream) -> None:
        reader = PreambleReader()
        try:
            with trio.fail_after(PREAMBLE_TIMEOUT):
                # One read usually holds the preamble and the first frames: fewer calls
                # into iroh. What follows the preamble is handed on as `trailing`.
                while (
                    preamble := reader.receive_data(await stream.receive_some(READ_SIZE))
                ) is NEED_DATA:
                    pass
        except ProtocolError as exc:  # §3.1, §3.2, unknown codes §3.3
            await reject(stream, exc.code, str(exc))
            return
        except (trio.TooSlowError, TransportError, trio.BrokenResourceError):
            await close_quietly(stream)
            return
        assert isinstance(preamble, Preamble)
        kind = preamble.stream_type
        route = self.routes.get(kind)
        if route is None:  # §3.3: known, but not served by this node
            await reject(
                stream,
                ErrorCode.STREAM_TYPE_NOT_SERVED,
                f"this node does not serve {kind.value} streams",
            )
            return
        if conn in self._refused:  # §5.4: nothing more of a refused connection
            await reject(stream, ErrorCode.UNAUTHORIZED, "this node refused your handshake")
            return
        if not self.admits(route.opener, remote):
            log.warning(
                "refused a stream from a node not allowed to open it",
                extra={"peer": str(remote), "stream_type": kind.value, "needs": route.opener.value},
            )
            await reject(stream, ErrorCode.UNAUTHORIZED, f"only {route.opener.value} may open this")
            return
        try:
            await route.handler(
                IncomingStream(
                    conn, remote, stream, reader.trailing_data, lambda: self._refused.add(conn)
                )
            )
        except Exception:
            # A bug met by one stream ends that stream with INTERNAL, never the node or
            # relay serving it, nor the other streams of its connection.
            log.exception(
                "a stream's handler failed; the stream is reset",
                extra={"peer": str(remote), "stream_type": kind.value},
            )
            with trio.move_on_after(1, shield=True), contextlib.suppress(*_GONE):
                await stream.reset(ErrorCode.INTERNAL)


async def reject(stream: QuicStream, code: int, message: str) -> None:
    """spec §3.5: a bare error object as the only frame, then the stream is closed."""
    with trio.move_on_after(1, shield=True):
        try:
            await stream.send_all(
                encode_frame(_encode(StreamError(code=code, message=message[:200])))
            )
            await stream.send_eof()
        except _GONE:
            pass
    await close_quietly(stream)
