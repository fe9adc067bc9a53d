"""The HTTP/1.1 client Gate uses to reach engines: trio streams, h11, a keep-alive pool.

Why not httpx/httpcore: every proxied request pays its client's cost, and httpcore's
general-purpose pool, on the same h11 parser, served a fraction of the requests per
second this client serves and added several times its time to each request (the
README's Benchmarks has the figures). So it is kept small and specialised:

- one `OriginPool` per scheme://host:port, idle connections reused LIFO (the most
  recently used one is the least likely to have been closed by the server);
- a request that fails on a *reused* connection before any response byte arrived is
  retried once on a freshly dialled one (never another pooled one, which has been idle
  as long and is as likely closed): the server closed it while idle, no work was done;
- a connection idle for `IDLE_TIMEOUT` is closed instead of reused, before the engine's
  own keep-alive timeout can close it under a request;
- a response whose body is abandoned (the client went away, a timeout) closes its
  connection instead of returning it to the pool, which is also how the engine learns
  that nobody is listening and stops generating;
- every failure surfaces as one of the UpstreamError classes below, never as a trio,
  ssl or h11 exception; `UpstreamConnectError` means nothing reached the engine, so
  the caller may try another provider.
"""

from __future__ import annotations

import abc
import contextlib
import ssl
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import h11
import trio

from gate.errors import ServiceError

__all__ = [
    "IDLE_TIMEOUT",
    "Origin",
    "StreamedResponse",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

# A large answer comes in reads this big when the engine is ahead (a token stream's
# reads are small whatever this is): each read is one trip down the pipeline, and on
# the relay door each trip is a call into iroh that costs per call, not only per byte.
# From 64 KiB, this took the node's CPU per MB of a large answer from ~11 to ~8 ms
# through a relay and from ~6 to ~4.5 ms on TCP (README, Benchmarks).
_READ_SIZE: Final = 256 * 1024
_MAX_IDLE_PER_ORIGIN: Final = 64
# uvicorn, which llama-cpp-python's and vLLM's servers run on, closes a keep-alive
# connection idle for 5 s. Dropping ours a second earlier means a request never races
# the engine's close (the stale-connection retry is then the exception, not the rule).
IDLE_TIMEOUT: Final = 4.0
# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones this client sets itself.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


class UpstreamError(ServiceError):
    """The engine could not be reached or did not answer properly."""


class UpstreamConnectError(UpstreamError):
    """No connection: nothing was sent, so another provider may be tried."""


class UpstreamTimeout(UpstreamError):
    """The engine did not answer (or go on answering) in time."""


class UpstreamProtocolError(UpstreamError):
    """The engine answered with something that is not HTTP/1.1."""


class UpstreamDisconnected(UpstreamError):
    """The engine closed the connection before the response was complete."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> tuple[Origin, str]:
        """Split a URL into its origin and its path+query."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port), target

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


class _Connection:
    __slots__ = ("eof", "h11", "idle_since", "received", "reused", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=256 * 1024)
        self.reused = False
        self.eof = False  # the server closed its side
        self.received = 0  # bytes received for the current request
        self.idle_since = 0.0  # trio.current_time() when it went back to the pool

    async def next_event(self) -> object:
        """The next h11 event, reading from the socket as needed (h11.PAUSED included)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self.receive()

    async def receive(self) -> None:
        data = bytes(await self.stream.receive_some(_READ_SIZE))
        self.eof = not data
        self.received += len(data)
        self.h11.receive_data(data)

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def aclose(self) -> None:
        with (
            trio.move_on_after(1, shield=True),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await self.stream.aclose()


class StreamedResponse(trio.abc.AsyncResource):
    """A response whose body is read as it arrives: an engine's (UpstreamResponse) or a
    peer's (gate.services.p2p.http_over_stream.PeerResponse). Failures are UpstreamError classes.
    Use it as an async context manager: leaving it closes (or cancels) the exchange."""

    status: int
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def content_length(self) -> int | None:
        value = self.header(b"content-length")
        return int(value) if value is not None and value.isdigit() else None

    @abc.abstractmethod
    def aiter_body(self) -> AsyncGenerator[bytes, None]:
        """Body chunks as they arrive."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the exchange: reuse or close the connection, or cancel the request."""

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        parts: list[bytes] = []
        size = 0
        async with aclosing(self.aiter_body()) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UpstreamProtocolError(f"response body over {limit} bytes")
                parts.append(chunk)
        return b"".join(parts)


class UpstreamResponse(StreamedResponse):
    """An engine's response over a pooled HTTP/1.1 connection."""

    def __init__(
        self,
        client: UpstreamClient,
        origin: Origin,
        conn: _Connection,
        head: h11.Response,
        read_timeout: float,
    ) -> None:
        self._client, self._origin, self._conn = client, origin, conn
        self.status: int = head.status_code
        self.headers: list[tuple[bytes, bytes]] = list(head.headers)
        self._read_timeout = read_timeout
        self._complete = False
        self._closed = False

    async def aiter_body(self) -> AsyncGenerator[bytes, None]:
        """Body chunks as the engine sends them; raises UpstreamError if it breaks off.

        `read_timeout` bounds the wait for each chunk (not the whole body), so a long
        stream is fine as long as tokens keep coming.
        """
        conn = self._conn
        while not self._complete:
            try:
                with trio.fail_after(self._read_timeout):
                    event = await conn.next_event()
            except trio.TooSlowError:
                raise UpstreamTimeout(
                    f"{self._origin.host_header}: no data for {self._read_timeout:g}s"
                ) from None
            except h11.RemoteProtocolError as exc:
                # h11 reports a body cut short by the server closing as a protocol error.
                error = UpstreamDisconnected if conn.eof else UpstreamProtocolError
                raise error(f"{self._origin.host_header}: {exc}") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise UpstreamDisconnected(f"{self._origin.host_header}: {exc}") from None
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
            elif isinstance(event, h11.ConnectionClosed):
                raise UpstreamDisconnected(
                    f"{self._origin.host_header}: connection closed mid-response"
                )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete and self._conn.reusable():
            self._conn.h11.start_next_cycle()
            if self._client._release(self._origin, self._conn):
                return
        # Abandoned mid-body (closing is the only way to stop the engine's work), not
        # reusable, or the pool is full.
        await self._conn.aclose()


class UpstreamClient:
    """Pooled HTTP/1.1 client. One per node; it owns every idle connection."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = IDLE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        response_timeout: float = 60.0,
        read_timeout: float = 60.0,
    ) -> UpstreamResponse:
        """Send a request; return once the response head arrived (the body streams).

        `response_timeout` bounds the wait for the status line (an engine that hangs
        before answering); `read_timeout` then bounds each wait for body data.
        """
        origin, target = Origin.parse(url)
        request_headers: list[tuple[bytes, bytes]] = [
            (b"host", origin.host_header.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        request_headers.extend(
            (name, value) for name, value in headers or () if name.lower() not in HOP_BY_HOP
        )
        request = h11.Request(method=method, target=target, headers=request_headers)
        for attempt in (1, 2):
            conn = await self._acquire(origin, pooled=attempt == 1)
            try:
                head = await self._exchange(conn, request, body, origin, response_timeout)
            except _StaleConnection:
                await conn.aclose()
                if attempt == 1:
                    continue
                raise UpstreamDisconnected(
                    f"{origin.host_header}: closed the connection without answering"
                ) from None
            except BaseException:
                await conn.aclose()
                raise
            return UpstreamResponse(self, origin, conn, head, read_timeout)
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        conn: _Connection,
        request: h11.Request,
        body: bytes,
        origin: Origin,
        response_timeout: float,
    ) -> h11.Response:
        data = conn.h11.send(request) or b""
        if body:
            data += conn.h11.send(h11.Data(data=body)) or b""
        data += conn.h11.send(h11.EndOfMessage()) or b""
        conn.received = 0
        try:
            await conn.stream.send_all(data)
            with trio.fail_after(response_timeout):
                while True:
                    event = await conn.next_event()
                    if isinstance(event, h11.InformationalResponse):
                        continue  # 100 Continue and friends: the real answer follows
                    if isinstance(event, h11.Response):
                        return event
                    raise UpstreamProtocolError(f"{origin.host_header}: unexpected {event!r}")
        except trio.TooSlowError:
            raise UpstreamTimeout(
                f"{origin.host_header}: no response within {response_timeout:g}s"
            ) from None
        except (
            h11.RemoteProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
        ) as exc:
            closed = conn.eof or not isinstance(exc, h11.RemoteProtocolError)
            if closed and conn.reused and conn.received == 0:
                raise _StaleConnection from None  # closed while idle in the pool
            if closed:
                raise UpstreamDisconnected(
                    f"{origin.host_header}: connection closed before a response"
                ) from None
            raise UpstreamProtocolError(f"{origin.host_header}: not HTTP: {exc}") from None

    async def _acquire(self, origin: Origin, *, pooled: bool = True) -> _Connection:
        """A pooled connection if `pooled` and one is fresh enough, else a new one."""
        idle = self._idle.get(origin)
        if idle:
            await self._drop_expired(idle)
        while pooled and idle:
            conn = idle.pop()
            if conn.h11.our_state is h11.IDLE:
                conn.reused = True
                return conn
            await conn.aclose()
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(origin.host, origin.port)
                if origin.scheme == "https":
                    tls = trio.SSLStream(stream, self._ssl(), server_hostname=origin.host)
                    await tls.do_handshake()
                    stream = tls
        except trio.TooSlowError:
            raise UpstreamConnectError(
                f"{origin.host_header}: connect timed out after {self.connect_timeout:g}s"
            ) from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"{origin.host_header}: {exc}") from None
        return _Connection(stream)

    async def _drop_expired(self, idle: list[_Connection]) -> None:
        """Close the connections idle past `idle_timeout`: released in order, the oldest
        are at the front."""
        deadline = trio.current_time() - self.idle_timeout
        expired = 0
        while expired < len(idle) and idle[expired].idle_since <= deadline:
            expired += 1
        if expired:
            stale, idle[:expired] = idle[:expired], []
            for conn in stale:
                await conn.aclose()

    def _release(self, origin: Origin, conn: _Connection) -> bool:
        """Keep `conn` for reuse; False if the pool is full (the caller closes it)."""
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= _MAX_IDLE_PER_ORIGIN:
            return False
        conn.idle_since = trio.current_time()
        idle.append(conn)
        return True

    def statistics(self) -> dict[str, int]:
        return {"idle_connections": sum(len(v) for v in self._idle.values())}

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()


class _StaleConnection(Exception):
    """A reused connection failed before any response byte: safe to retry once."""
