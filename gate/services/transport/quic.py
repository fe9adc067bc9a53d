"""Gate's use of iroh: one endpoint, its connections and streams, as trio-style objects.

Everything iroh-shaped stops here. Above this module there are :class:`Endpoint`,
:class:`Connection` and :class:`QuicStream` (a :class:`trio.abc.HalfCloseableStream`),
node ids are :class:`gate.protocol.NodeId`, and failures are the
:class:`TransportError` tree (:mod:`gate.errors`); no ``iroh.IrohError`` escapes.
iroh's async calls run natively on trio through :mod:`gate.services.transport.iroh_trio`.

Streams
    One QUIC bidirectional stream = one :class:`QuicStream`. ``send_eof()`` finishes
    our half (the peer reads ``b""``); ``aclose()`` is the graceful close of both
    halves (finish ours, STOP_SENDING theirs with code 0); ``reset(code)`` aborts both
    halves with ``code`` (the peer's reads and writes raise :class:`StreamReset`).
    Local misuse raises trio's own :class:`trio.ClosedResourceError` /
    :class:`trio.BusyResourceError`, as any trio stream does; failures caused by the
    peer or the network raise :class:`StreamReset` / :class:`ConnectionLost`, which are
    also :class:`trio.BrokenResourceError`, so generic trio stream code (and
    :func:`trio.testing.check_half_closeable_stream`) treats them as a broken stream.

    QUIC opens streams lazily: the peer's :meth:`Connection.accept_stream` returns only
    once the opener has sent its first byte (or EOF). A protocol where the opener waits
    for the acceptor to speak first would hang; Gate's preamble is sent by the opener.

    iroh keeps each stream half behind a mutex that an in-flight read or write holds.
    So ``aclose``/``reset`` first interrupt our own in-flight call on that half (it
    raises ClosedResourceError and its Rust future is dropped, which releases the
    lock; :func:`gate.services.transport.iroh_trio.interrupt`), then issue the close,
    shielded and bounded.

Connections
    ``close(code, reason)`` is QUIC's immediate close: data sent but not yet
    acknowledged may be lost. The side that reads last closes (Gate: the dialer).

Accepting
    Pull style, no iroh callbacks: :meth:`Endpoint.accept` returns the next
    :class:`IncomingConnection` (``Endpoint.accept_next()`` in iroh); its
    :meth:`~IncomingConnection.accept` runs the handshake and returns a
    :class:`Connection` whose :attr:`~Connection.remote_id` iroh has authenticated
    (mutual TLS with raw Ed25519 keys). :meth:`Endpoint.serve` is the accept loop
    with per-connection tasks, following the ``nursery.start`` convention.

Binding
    iroh binds one IPv4 and one IPv6 UDP socket; naming only one family leaves the
    other on its wildcard default (``[::]``). So a specific host pins the other family
    to loopback: ``127.0.0.1`` binds ``127.0.0.1:port`` + ``[::1]:0`` (falling back to
    IPv4 only where IPv6 is unavailable), ``0.0.0.0`` binds ``0.0.0.0:port`` plus
    iroh's ``[::]:0``. This is done in a synchronous ``iroh.Preset`` callback that
    iroh calls inside ``bind``; it involves no asyncio.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import iroh
import trio

import gate.services.transport.iroh_trio as iroh_trio
from gate.errors import ServiceError
from gate.protocol.node_id import NodeId

__all__ = [
    "ALPN",
    "BindError",
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "Endpoint",
    "IncomingConnection",
    "PeerAddr",
    "QuicStream",
    "StreamReset",
    "TransportError",
    "bind_endpoint",
    "parse_ticket",
]

log = logging.getLogger(__name__)

ALPN = b"gate/1"

DEFAULT_RECEIVE_SIZE = 64 * 1024
# iroh allocates (and zeroes) a buffer of the requested size for every read.
MAX_RECEIVE_SIZE = 1024 * 1024
# QUIC varints: error codes must be below 2**62.
_MAX_CODE = 2**62 - 1
# How long the shielded cleanup of aclose/reset may wait for iroh.
_CLEANUP_TIMEOUT = 5.0

# Which iroh relay servers the endpoint uses (iroh's, for NAT traversal; not Gate's relay).
IrohRelaySetting = Literal["disabled", "default"] | Sequence[str]


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class TransportError(ServiceError):
    """The P2P transport failed. ``iroh_kind`` names iroh's error category, if any."""

    def __init__(self, message: str, *, iroh_kind: str | None = None) -> None:
        super().__init__(message)
        self.iroh_kind = iroh_kind


class BindError(TransportError):
    """The endpoint could not bind its UDP sockets (address in use, no such address)."""


class ConnectError(TransportError):
    """A connection could not be established: unreachable, wrong node id, ALPN refused."""


class ConnectionLost(TransportError, trio.BrokenResourceError):
    """The connection is gone: closed by either side, timed out, or the endpoint closed.

    ``code``/``reason`` are the application close code and reason when the peer closed
    the connection on purpose; ``locally`` is true when this side closed it.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str | None = None,
        locally: bool = False,
        iroh_kind: str | None = None,
    ) -> None:
        super().__init__(message, iroh_kind=iroh_kind)
        self.code = code
        self.reason = reason
        self.locally = locally


class StreamReset(TransportError, trio.BrokenResourceError):
    """The peer aborted the stream: it reset its sending half (our reads fail) or asked
    us to stop sending (our writes fail). ``code`` is the peer's application code."""

    def __init__(self, message: str, *, code: int, iroh_kind: str | None = None) -> None:
        super().__init__(message, iroh_kind=iroh_kind)
        self.code = code


_LOCATION = re.compile(r"\s*\([^()\n]*\.rs:\d+:\d+\)")
_CAUSED_BY = re.compile(r"\s*\n\s*Caused by:\s*\n\s*")
_RESET = re.compile(r"^Reset\((\d+)\)")
_STOPPED = re.compile(r"^Stopped\((\d+)\)")
_APP_CLOSE = re.compile(r'error_code: (\d+), reason: (b"(?:[^"\\]|\\.)*")')


def _clean(message: str) -> str:
    """iroh's message without Rust source locations, its cause chain on one line."""
    message = _LOCATION.sub("", message)
    message = _CAUSED_BY.sub(": ", message)
    return " ".join(message.split())


def _connection_lost(message: str, kind: str | None) -> ConnectionLost:
    code: int | None = None
    reason: str | None = None
    if match := _APP_CLOSE.search(message):
        code = int(match.group(1))
        with contextlib.suppress(ValueError, SyntaxError):
            raw = ast.literal_eval(match.group(2))
            reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else None
    locally = "LocallyClosed" in message
    if locally:
        text = "connection closed locally"
    elif code is not None:
        text = f"connection closed by peer (code {code}{': ' + reason if reason else ''})"
    else:
        text = f"connection lost: {_clean(message)}"
    return ConnectionLost(text, code=code, reason=reason, locally=locally, iroh_kind=kind)


def _map_error(exc: BaseException, doing: str, default: type[TransportError]) -> TransportError:
    """The TransportError for an iroh exception raised while ``doing`` something."""
    if isinstance(exc, iroh.IrohError):
        kind = exc.kind().name
        message = exc.message()
    else:  # iroh.InternalError: a panic or a protocol mismatch inside the bindings
        kind, message = "INTERNAL", str(exc)
    if match := _RESET.match(message):
        code = int(match.group(1))
        return StreamReset(f"{doing}: peer reset the stream (code {code})", code=code)
    if match := _STOPPED.match(message):
        code = int(match.group(1))
        return StreamReset(f"{doing}: peer stopped reading (code {code})", code=code)
    if message.startswith("ConnectionLost") or (
        kind == "CONNECTION" and default is not ConnectError
    ):
        return _connection_lost(message, kind)
    if kind == "BIND":
        return BindError(f"{doing}: {_clean(message)}", iroh_kind=kind)
    if kind in ("CONNECT", "ALPN") or default is ConnectError:
        return ConnectError(f"{doing}: {_clean(message)}", iroh_kind=kind)
    return default(f"{doing}: {_clean(message)} [{kind}]", iroh_kind=kind)


_IROH_ERRORS: tuple[type[BaseException], ...] = (iroh.IrohError, iroh.InternalError)


async def _call(
    call: Callable[[], Awaitable[Any]],
    doing: str,
    default: type[TransportError] = TransportError,
) -> Any:
    """Run one iroh async call: a checkpoint first, iroh errors mapped."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        return await call()
    except _IROH_ERRORS as exc:
        raise _map_error(exc, doing, default) from None


def _check_code(code: int) -> int:
    if not isinstance(code, int) or not 0 <= code <= _MAX_CODE:
        raise ValueError(f"a QUIC error code is an integer in [0, 2**62), got {code!r}")
    return code


# ---------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------


class _DirectionState:
    """Our use of one direction (sending or receiving) of a QuicStream: busy, closed,
    sticky error, the task in an iroh call on it."""

    __slots__ = ("busy", "closed", "error", "task")

    def __init__(self) -> None:
        self.busy = False
        self.closed = False  # closed by us: further use is ClosedResourceError
        self.error: TransportError | None = None  # broken by the peer: sticky
        self.task: trio.lowlevel.Task | None = None  # in an iroh call on this half


class QuicStream(trio.abc.HalfCloseableStream):
    """One bidirectional QUIC stream. See the module doc for close/reset semantics."""

    def __init__(self, bi: Any, connection: Connection) -> None:
        self._send_stream = bi.send()
        self._recv_stream = bi.recv()
        self.connection = connection
        self._send = _DirectionState()
        self._recv = _DirectionState()
        self._finished = False  # we sent FIN (send_eof or graceful aclose)
        self._eof = False  # the peer's FIN was read

    # -- sending --------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        half = self._enter(self._send, "send_all")
        try:
            await self._check_send()
            if not data:
                await trio.lowlevel.checkpoint()
                return
            payload = bytes(data) if not isinstance(data, bytes) else data
            await self._run(half, lambda: self._send_stream.write_all(payload), "send")
        finally:
            half.busy = False

    async def wait_send_all_might_not_block(self) -> None:
        half = self._enter(self._send, "wait_send_all_might_not_block")
        try:
            await self._check_send()
            # iroh buffers writes in Rust and exposes no writability: sending may always
            # be attempted (a blocked send_all then waits for flow control).
            await trio.lowlevel.checkpoint()
        finally:
            half.busy = False

    async def send_eof(self) -> None:
        half = self._enter(self._send, "send_eof")
        try:
            if self._send.closed and not self._finished:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("stream was closed")
            if self._finished or self._send.error is not None:
                await trio.lowlevel.checkpoint()
                return
            await self._run(half, self._send_stream.finish, "send_eof")
            self._finished = True
            self._send.closed = True
        finally:
            half.busy = False

    # -- receiving ------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif not isinstance(max_bytes, int) or isinstance(max_bytes, bool):
            raise TypeError(f"max_bytes must be an integer or None, not {max_bytes!r}")
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        half = self._enter(self._recv, "receive_some")
        try:
            if self._recv.closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("stream was closed")
            if self._recv.error is not None:
                await trio.lowlevel.checkpoint()
                raise self._recv.error
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            size = min(max_bytes, MAX_RECEIVE_SIZE)
            data: bytes = await self._run(half, lambda: self._recv_stream.read(size), "receive")
            if not data:
                self._eof = True
            return data
        finally:
            half.busy = False

    # -- closing --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Graceful close: finish our half, stop the peer's half (code 0). Idempotent.

        Closes even when cancelled (the iroh calls run shielded, bounded in time).
        A ``send_all`` interrupted by this close is reset instead of finished, so the
        peer never mistakes a truncated message for a complete one.
        """
        await self._close(code=None)

    async def reset(self, code: int = 0) -> None:
        """Abort both halves with ``code``: the peer's reads and writes raise StreamReset."""
        await self._close(code=_check_code(code))

    @property
    def is_closed(self) -> bool:
        return self._send.closed and self._recv.closed

    # -- internals ------------------------------------------------------------------

    def _enter(self, half: _DirectionState, what: str) -> _DirectionState:
        if half.busy:
            raise trio.BusyResourceError(f"another task is already in {what} on this half")
        half.busy = True
        return half

    async def _check_send(self) -> None:
        if self._send.closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("stream was closed for sending")
        if self._send.error is not None:
            await trio.lowlevel.checkpoint()
            raise self._send.error

    async def _run(
        self, half: _DirectionState, call: Callable[[], Awaitable[Any]], doing: str
    ) -> Any:
        """One iroh call on one half, interruptible by our own close, errors sticky.

        Our close interrupts the call through the bridge (iroh_trio.interrupt), not a
        cancel scope: a scope around every call was half the CPU time of a small write."""
        task = trio.lowlevel.current_task()
        half.task = task
        try:
            return await _call(call, doing)
        except TransportError as exc:
            if half.error is None:
                half.error = self.connection._explain(exc)
            raise half.error from None
        finally:
            half.task = None
            iroh_trio.end_interruptible(task)

    async def _close(self, code: int | None) -> None:
        send_interrupted = self._send.task is not None
        first = not self.is_closed
        self._send.closed = True
        self._recv.closed = True
        for half in (self._send, self._recv):
            if half.task is not None:
                iroh_trio.interrupt(
                    half.task, trio.ClosedResourceError("stream was closed while in use")
                )
        if first:
            if code is None and not send_interrupted:
                # Graceful: let go of both halves. Dropping iroh's (quinn's) stream
                # halves finishes an unfinished send half and stops an unread receive
                # half with code 0, exactly what finish() and stop(0) would do, without
                # two more calls into Rust per stream, or the shielded scope those would
                # need. The handles go when their last in-flight call has been freed.
                self._send_stream = self._recv_stream = None
                self._finished = True
            else:
                with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT):
                    await self._abort_halves(code or 0)
        await trio.lowlevel.checkpoint()

    async def _abort_halves(self, code: int) -> None:
        """Reset our half and stop theirs with ``code``.

        Errors here are the peer having closed first, or the connection being gone: the
        stream is closed either way."""
        if not self._finished and self._send.error is None:
            with contextlib.suppress(*_IROH_ERRORS):
                await self._send_stream.reset(code)
        if not self._eof and self._recv.error is None:
            with contextlib.suppress(*_IROH_ERRORS):
                await self._recv_stream.stop(code)

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<QuicStream {state} to {self.connection.remote_id.short()}>"


# ---------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------


class Connection(trio.abc.AsyncResource):
    """A QUIC connection to an authenticated peer."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.remote_id = NodeId(conn.remote_id().to_bytes())
        self.alpn: bytes = conn.alpn()
        # Why this side closed the connection: iroh's error on our own streams then says
        # only that it was closed locally.
        self._closed_because = ""

    async def open_stream(self) -> QuicStream:
        """Open a bidirectional stream. The peer sees it with our first byte."""
        bi = await _call(self._conn.open_bi, "open stream", ConnectionLost)
        return QuicStream(bi, self)

    async def accept_stream(self) -> QuicStream:
        """The next stream the peer opened (and has sent on)."""
        bi = await _call(self._conn.accept_bi, "accept stream", ConnectionLost)
        return QuicStream(bi, self)

    def allow_incoming_streams(self, count: int) -> None:
        """How many streams the peer may have open to us at once (QUIC's default: 100)."""
        try:
            self._conn.set_max_concurrent_bi_streams(count)
        except _IROH_ERRORS as exc:
            raise _map_error(exc, "set stream limit", TransportError) from None

    def close(self, code: int = 0, reason: str = "") -> None:
        """Close immediately (QUIC CONNECTION_CLOSE): unacknowledged data may be lost.

        ``reason`` goes to the peer, and into the ConnectionLost our own streams raise."""
        _check_code(code)
        if not self.is_closed:
            self._closed_because = reason
        try:
            self._conn.close(code, reason.encode("utf-8")[:512])
        except _IROH_ERRORS as exc:
            raise _map_error(exc, "close connection", TransportError) from None

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def _explain(self, exc: TransportError) -> TransportError:
        """``exc``, with the reason this side gave when it closed the connection."""
        if not (isinstance(exc, ConnectionLost) and exc.locally and self._closed_because):
            return exc
        return ConnectionLost(
            f"{exc}: {self._closed_because}", locally=True, iroh_kind=exc.iroh_kind
        )

    async def wait_closed(self) -> str:
        """Wait until the connection is closed (by either side); returns the reason."""
        reason: str = await _call(self._conn.closed, "wait for close")
        return reason

    @property
    def is_closed(self) -> bool:
        return self._conn.close_reason() is not None

    @property
    def close_reason(self) -> str | None:
        reason: str | None = self._conn.close_reason()
        return reason

    def probe(self) -> int:
        """Send the peer an empty QUIC datagram; return how many UDP datagrams came from
        it so far. The peer's QUIC stack acknowledges the probe by itself (no work for
        its application), so a count that stops moving across probes means it is gone:
        a liveness check far cheaper than a request, used where waiting for QUIC's own
        idle timeout (not settable through the bindings) would take too long."""
        try:
            self._conn.send_datagram(b"")
            received: int = self._conn.stats().udp_rx_datagrams
        except _IROH_ERRORS as exc:
            raise self._explain(_map_error(exc, "probe", ConnectionLost)) from None
        return received

    @property
    def rtt_ms(self) -> int | None:
        rtt: int | None = self._conn.rtt()
        return rtt

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<Connection {state} to {self.remote_id.short()}>"


class IncomingConnection:
    """A connection attempt not yet handshaken. Consume it exactly once."""

    def __init__(self, incoming: Any, remote_address: str | None) -> None:
        self._incoming = incoming
        self.remote_address = remote_address  # "ip:port" for direct UDP, else None
        self._consumed = False

    async def accept(self) -> Connection:
        """Run the handshake; the returned connection's peer id is authenticated."""
        self._consume()
        accepting = await _call(self._incoming.accept, "accept connection", ConnectError)
        conn = await _call(accepting.connect, "accept connection", ConnectError)
        return Connection(conn)

    async def refuse(self) -> None:
        """Reject the attempt (the dialer gets a ConnectError)."""
        self._consume()
        await _call(self._incoming.refuse, "refuse connection")

    async def ignore(self) -> None:
        """Drop the attempt without a reply."""
        self._consume()
        await _call(self._incoming.ignore, "ignore connection")

    def _consume(self) -> None:
        if self._consumed:
            raise trio.ClosedResourceError("this incoming connection was already consumed")
        self._consumed = True


# ---------------------------------------------------------------------------------------
# Endpoint
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerAddr:
    """How to reach a node: its id, direct "ip:port" addresses, its home iroh relay."""

    node_id: NodeId
    addresses: tuple[str, ...] = ()
    iroh_relay_url: str | None = None


def parse_ticket(ticket: str) -> PeerAddr:
    """Decode an iroh endpoint ticket (``endpoint...``) as printed by :meth:`Endpoint.ticket`."""
    try:
        addr = iroh.EndpointTicket.from_string(ticket.strip()).endpoint_addr()
    except _IROH_ERRORS as exc:
        detail = _map_error(exc, "parse ticket", TransportError)
        raise ValueError(f"not an endpoint ticket: {detail}") from None
    return _peer_addr(addr)


def _peer_addr(addr: Any) -> PeerAddr:
    return PeerAddr(NodeId(addr.id().to_bytes()), tuple(addr.direct_addresses()), addr.relay_url())


def _check_socket_addr(text: str) -> str:
    """``text`` if it is "ipv4:port" or "[ipv6]:port", else ValueError."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # a bare IPv6 address needs brackets
    try:
        ipaddress.ip_address(host)
        valid = bool(sep) and port.isdigit() and 0 < int(port) <= 65535
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f'not a socket address: {text!r} (expected "ip:port" or "[ip6]:port")')
    return text


def _format_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _BindPreset(iroh.Preset):
    """Configures iroh's builder: the base preset, then our socket addresses.

    A *synchronous* uniffi callback, called by Rust inside ``Endpoint.bind`` (no asyncio
    involved). It must not raise across the FFI (that is a Rust panic): errors are kept
    and re-raised by :func:`bind_endpoint`.
    """

    def __init__(self, discovery: bool, bind_addrs: Sequence[str]) -> None:
        self.discovery = discovery
        self.bind_addrs = list(bind_addrs)
        self.error: BaseException | None = None

    def apply(self, builder: Any) -> None:
        try:
            if self.discovery:
                builder.apply_n0()
            else:
                builder.apply_minimal()
            for addr in self.bind_addrs:
                builder.bind_addr(addr)
        except BaseException as exc:  # never across the FFI
            self.error = exc


def _bind_plan(host: str, port: int) -> tuple[list[str], str | None]:
    """The addresses to bind, and the loopback companion that may be dropped."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be an IP address, got {host!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in [0, 65535], got {port}")
    primary = _format_addr(str(ip), port)
    if ip.is_unspecified:
        return [primary], None  # all interfaces, as asked; iroh adds the other family's
    companion = "[::1]:0" if ip.version == 4 else "127.0.0.1:0"
    return [primary, companion], companion


def _iroh_relay_mode(iroh_relay: IrohRelaySetting) -> Any:
    if iroh_relay == "disabled":
        return iroh.RelayMode.disabled()
    if iroh_relay == "default":
        return iroh.RelayMode.default_mode()
    if isinstance(iroh_relay, str):
        raise ValueError(
            f"iroh_relay must be 'disabled', 'default' or a list of URLs, not {iroh_relay!r}"
        )
    try:
        return iroh.RelayMode.custom_from_urls(list(iroh_relay))
    except _IROH_ERRORS as exc:
        urls = list(iroh_relay)
        raise ValueError(f"invalid iroh relay URL in {urls!r}: {_clean(str(exc))}") from None


async def bind_endpoint(
    secret_key: bytes,
    *,
    port: int = 0,
    host: str = "0.0.0.0",
    iroh_relay: IrohRelaySetting = "disabled",
    discovery: bool = False,
    alpns: Iterable[bytes] = (ALPN,),
) -> Endpoint:
    """Bind Gate's iroh endpoint with the node's 32-byte Ed25519 secret key.

    ``iroh_relay``: "disabled", "default" (n0's public relays) or a list of relay URLs.
    ``discovery``: publish and look up addresses through n0's DNS/pkarr services.
    Must run inside trio (installs the iroh bridge). Raises BindError.
    """
    iroh_trio.install()
    if len(secret_key) != 32:
        raise ValueError(f"a node secret key is 32 bytes, got {len(secret_key)}")
    addrs, companion = _bind_plan(host, port)
    relay_mode = _iroh_relay_mode(iroh_relay)
    alpn_list = list(alpns)
    while True:
        preset = _BindPreset(discovery, addrs)
        options = iroh.EndpointOptions(
            preset=preset,
            secret_key=bytes(secret_key),
            alpns=alpn_list,
            relay_mode=relay_mode,
        )
        try:
            bind = functools.partial(iroh.Endpoint.bind, options)
            raw = await _call(bind, f"bind {addrs[0]}", BindError)
        except BindError:
            if preset.error is not None:
                raise BindError(f"bind {addrs[0]}: {preset.error}") from None
            if companion is not None and companion in addrs:
                # No IPv6 (or IPv4) loopback here: bind the asked family only; the
                # other family's wildcard default then fails to bind as well.
                addrs.remove(companion)
                continue
            raise
        if preset.error is not None:
            with trio.CancelScope(shield=True):
                await _call(raw.close, "close endpoint")
            raise BindError(f"bind {addrs[0]}: {preset.error}")
        return Endpoint(raw, ALPN if ALPN in alpn_list else alpn_list[0])


class Endpoint(trio.abc.AsyncResource):
    """Gate's iroh endpoint. Use :func:`bind_endpoint` to make one."""

    def __init__(self, raw: Any, alpn: bytes) -> None:
        self._raw = raw
        self._alpn = alpn
        self.node_id = NodeId(raw.id().to_bytes())
        self._closed = False

    @property
    def addresses(self) -> list[str]:
        """The "ip:port" UDP sockets the endpoint is bound to (may include wildcards)."""
        return list(self._raw.bound_sockets())

    @property
    def direct_addresses(self) -> list[str]:
        """The "ip:port" addresses to advertise to peers (wildcards expanded)."""
        return list(self._raw.addr().direct_addresses())

    def peer_addr(self) -> PeerAddr:
        """How peers can reach this endpoint: id, direct addresses, home iroh relay."""
        return _peer_addr(self._raw.addr())

    def ticket(self) -> str:
        """An iroh endpoint ticket (id + addresses + iroh relay) for ``gate peers add``."""
        return str(iroh.EndpointTicket.from_addr(self._raw.addr()))

    async def wait_online(self) -> None:
        """Wait until the endpoint has a home iroh relay (never returns if they are off)."""
        self._check_open()
        await _call(self._raw.online, "wait for a home iroh relay")

    async def connect(
        self,
        node_id: NodeId,
        addrs: Iterable[str] = (),
        *,
        iroh_relay_url: str | None = None,
        alpn: bytes | None = None,
    ) -> Connection:
        """Dial ``node_id`` at ``addrs`` ("ip:port") and/or ``iroh_relay_url``.

        The handshake proves the peer holds ``node_id``'s key, or fails with
        ConnectError. No timeout of its own: an address that never answers waits
        until the caller's cancel scope ends it.
        """
        self._check_open()
        direct = [_check_socket_addr(addr) for addr in addrs]
        try:
            endpoint_id = iroh.EndpointId.from_bytes(node_id.bytes)
            target = iroh.EndpointAddr(endpoint_id, iroh_relay_url, direct)
        except _IROH_ERRORS as exc:
            raise ValueError(f"invalid peer address: {_clean(str(exc))}") from None
        conn = await _call(
            lambda: self._raw.connect(target, alpn or self._alpn),
            f"connect to {node_id.short()}",
            ConnectError,
        )
        return Connection(conn)

    async def accept(self) -> IncomingConnection:
        """The next incoming connection attempt. ClosedResourceError once closed."""
        self._check_open()
        incoming = await _call(self._raw.accept_next, "accept")
        if incoming is None:
            raise trio.ClosedResourceError("endpoint was closed")
        try:
            remote = await incoming.remote_addr()
            remote_address = remote.addr if remote.is_ip() else None
        except _IROH_ERRORS:
            remote_address = None
        return IncomingConnection(incoming, remote_address)

    async def serve(
        self,
        handler: Callable[[Connection], Awaitable[object]],
        *,
        handshake_timeout: float = 10.0,
        linger: float = 5.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Accept forever; run ``handler(conn)`` for each connection in its own task.

        Failed handshakes are logged and dropped, and so are errors the peer causes
        inside a handler (TransportError, trio.BrokenResourceError); any other exception
        from a handler propagates and ends ``serve``, as in ``trio.serve_listeners``.
        When the handler returns, the connection gets up to ``linger`` seconds for the
        peer to close it (so the last response is not cut off by our CONNECTION_CLOSE),
        then is closed. Returns only by cancellation or an error; ClosedResourceError if
        the endpoint is closed.
        """

        async def run(incoming: IncomingConnection) -> None:
            try:
                with trio.fail_after(handshake_timeout):
                    conn = await incoming.accept()
            except (TransportError, trio.TooSlowError) as exc:
                log.debug("incoming from %s failed: %s", incoming.remote_address, exc)
                return
            try:
                await handler(conn)
                with trio.move_on_after(linger):
                    await conn.wait_closed()
            except (TransportError, trio.BrokenResourceError) as exc:
                log.debug("connection from %s ended: %s", conn.remote_id.short(), exc)
            finally:
                with contextlib.suppress(TransportError):
                    conn.close()

        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                nursery.start_soon(run, await self.accept())

    async def aclose(self) -> None:
        """Close the endpoint and its connections. Idempotent; closes even if cancelled."""
        if not self._closed:
            self._closed = True
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(_CLEANUP_TIMEOUT),
                contextlib.suppress(TransportError),
            ):
                await _call(self._raw.close, "close endpoint")
        await trio.lowlevel.checkpoint()

    @property
    def is_closed(self) -> bool:
        return self._closed or bool(self._raw.is_closed())

    def _check_open(self) -> None:
        if self.is_closed:
            raise trio.ClosedResourceError("endpoint was closed")

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<Endpoint {state} {self.node_id.short()} {self.addresses}>"
