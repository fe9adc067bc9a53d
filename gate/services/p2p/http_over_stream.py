"""One HTTP exchange over one HttpProxy stream (spec §7), both ends.

Requester (`request_over_stream`): writes the preamble, RequestHead, the body as Body
frames and End, then returns a `PeerResponse` as soon as the ResponseHead arrives. Its
interface is that of `UpstreamResponse` (status, headers, `aiter_body()`, `aclose()`),
and it fails with the same UpstreamError classes, so the gateway relays a peer's answer
with exactly the code that relays an engine's: chunk by chunk; if the peer dies
mid-stream, an error event in the client's dialect and then the client's response
aborted, without its terminating chunk (spec §7.3).

Responder (`serve_http_stream`): turns the stream into one ASGI call of this node's peer
door (the API routes a peer may use; see gate.services.http.router.Door), so a peer's
request goes through the very same pipeline as a local one (routing, limits, usage).
The calling peer is in `scope["extensions"]["gate.peer"]`.

Cancellation crosses the network both ways: a requester that abandons the response sends
StreamError(CANCELLED) and resets the stream; the responder then cancels the app, which
closes the engine connection. Backpressure is QUIC's: `send_all` waits while the peer
is not reading.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any, Final

import trio

from gate.protocol import (
    EOF,
    HTTP_PROXY,
    NEED_DATA,
    Body,
    Channel,
    End,
    ErrorCode,
    HttpFrame,
    ProtocolError,
    RequestHead,
    ResponseHead,
    Role,
    StreamError,
    StreamType,
    encode_preamble,
    http_status_of,
)
from gate.services.engines.client import (
    StreamedResponse,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gate.services.http.router import ASGIApp, Door
from gate.services.transport.framed import ByteStream, FramedStream, close_quietly

__all__ = ["PeerRefused", "PeerResponse", "request_over_stream", "serve_http_stream"]

log = logging.getLogger("gate.p2p.http")

# Body frames stay well under the 1 MiB frame limit: msgpack adds a few bytes per frame.
CHUNK: Final = 256 * 1024


# --- requester ---------------------------------------------------------------------


class PeerRefused(UpstreamError):
    """The peer answered with StreamError before any response head; `status` is what the
    client gets for its code (spec §7.5: UNAVAILABLE 503, NOT_FOUND 404, ...)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = http_status_of(code)


class PeerResponse(StreamedResponse):
    """A peer's response, read as it arrives."""

    def __init__(
        self, frames: FramedStream[HttpFrame], head: ResponseHead, peer: str, read_timeout: float
    ):
        self._frames = frames
        self.status = head.status
        self.headers: list[tuple[bytes, bytes]] = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in head.headers
        ]
        self._peer = peer
        self._read_timeout = read_timeout
        self._complete = False
        self._closed = False

    async def aiter_body(self) -> AsyncGenerator[bytes, None]:
        while not self._complete:
            try:
                event = await self._frames.receive(self._read_timeout)
            except trio.TooSlowError:
                raise UpstreamTimeout(
                    f"peer {self._peer}: no data for {self._read_timeout:g}s"
                ) from None
            except ProtocolError as exc:
                # A stream cut off mid-response is the peer going away, not a bad peer.
                truncated = exc.code == ErrorCode.TRUNCATED
                error = UpstreamDisconnected if truncated else UpstreamProtocolError
                raise error(f"peer {self._peer}: {exc}") from None
            except Exception as exc:  # the transport's reset / lost-connection errors
                raise UpstreamDisconnected(f"peer {self._peer}: {exc}") from None
            if isinstance(event, Body):
                yield event.data
            elif isinstance(event, End):
                self._complete = True
            elif isinstance(event, StreamError):
                raise UpstreamDisconnected(f"peer {self._peer} failed: {event.message}")
            elif event is EOF:
                raise UpstreamDisconnected(f"peer {self._peer}: stream ended early")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete:
            # The graceful close below finishes our half (spec §7.2).
            with contextlib.suppress(ProtocolError):
                self._frames.channel.send_finish()
        else:  # abandoned: tell the peer to stop its engine (spec §7.3)
            with trio.move_on_after(1, shield=True), contextlib.suppress(Exception):
                await self._frames.send(
                    StreamError(code=ErrorCode.CANCELLED, message="requester cancelled")
                )
        await close_quietly(self._frames.stream)


async def request_over_stream(
    stream: ByteStream,
    *,
    method: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    peer: str,
    response_timeout: float,
    read_timeout: float,
) -> PeerResponse:
    """Send one request on a fresh stream; return once the peer's response head arrived."""
    frames = FramedStream(stream, Channel(HTTP_PROXY, Role.INITIATOR))
    try:
        head = RequestHead(
            method=method,
            target=target,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
        )
        data = encode_preamble(StreamType.HTTP_PROXY) + frames.channel.send(head)
        for start in range(0, len(body), CHUNK):
            data += frames.channel.send(Body(data=body[start : start + CHUNK]))
        data += frames.channel.send(End())
        # The send half stays open after End: it is how a cancel reaches the peer while
        # its engine works (spec §7.3). It is finished once the response is complete.
        await stream.send_all(data)
        with trio.fail_after(response_timeout):
            while True:
                event = await frames.receive()
                if isinstance(event, ResponseHead):
                    return PeerResponse(frames, event, peer, read_timeout)
                if isinstance(event, StreamError):
                    raise PeerRefused(
                        f"peer {peer} refused (code {event.code}): {event.message}", event.code
                    )
                raise UpstreamDisconnected(f"peer {peer}: stream ended before a response")
    except trio.TooSlowError:
        await close_quietly(stream)
        raise UpstreamTimeout(f"peer {peer}: no response within {response_timeout:g}s") from None
    except ProtocolError as exc:
        await close_quietly(stream)
        raise UpstreamProtocolError(f"peer {peer}: {exc}") from None
    except UpstreamError:
        await close_quietly(stream)
        raise
    except BaseException as exc:
        await close_quietly(stream)
        if isinstance(exc, Exception):  # the transport's errors: reset, connection lost
            raise UpstreamDisconnected(f"peer {peer}: {exc}") from None
        raise


# --- responder ---------------------------------------------------------------------


async def serve_http_stream(
    stream: ByteStream, app: ASGIApp, *, peer: str, trailing: bytes = b""
) -> None:
    """Run one request from `peer` (its preamble already read) through `app`.

    `trailing`: bytes that arrived after the preamble. Returns when the exchange is
    over; a protocol error from the peer ends it with StreamError and a reset.
    """
    frames = FramedStream(stream, Channel(HTTP_PROXY, Role.RESPONDER))
    if trailing:
        frames.channel.receive_data(trailing)
    try:
        head = await frames.receive()
        if not isinstance(head, RequestHead):
            raise _StreamGone()  # EOF, or an error frame: nothing to serve
        exchange = _ExchangeOverStream(frames, head, peer)
        await exchange.run(app)
        if exchange.protocol_error is not None:
            raise exchange.protocol_error
    except ProtocolError as exc:
        log.info("peer broke the HttpProxy protocol", extra={"peer": peer, "error": str(exc)})
        with trio.move_on_after(1, shield=True):
            with contextlib.suppress(Exception):
                await stream.send_all(encode_error(exc.code, str(exc), frames))
    except _StreamGone:
        pass
    except Exception as exc:
        log.debug("peer stream failed", extra={"peer": peer, "error": repr(exc)})
    finally:
        await close_quietly(stream)


def encode_error(code: int, message: str, frames: FramedStream[HttpFrame]) -> bytes:
    try:
        return frames.channel.send(StreamError(code=code, message=message[:500]))
    except ProtocolError:
        return b""


class _StreamGone(Exception):
    pass


class _ExchangeOverStream:
    """The ASGI side of one exchange.

    One task reads the stream: it hands the request body to the app through a small
    channel (so a slow app slows the requester: backpressure), then watches for the
    requester cancelling. The app's receive() only consumes what the reader hands over,
    so whatever the app does, a cancel from the requester stops it. The app runs in the
    calling task (one task fewer per request), inside a scope the reader cancels.

    The usual request is small and arrives whole with its head (head, body and End in
    one read): then the body is taken from the buffer at once and the reader starts
    straight at watching, without the channel and its task switches.
    """

    def __init__(self, frames: FramedStream[HttpFrame], head: RequestHead, peer: str) -> None:
        self.frames = frames
        self.head = head
        self.peer = peer
        self.request_done = False
        self.response_done = False
        self.cancelled = trio.Event()  # the requester cancelled or went away
        # The request's End arrived. The response's End waits for it (spec §7.2): only a
        # complete request gets a complete response, so a requester that finishes early
        # gets TRUNCATED every time, whether or not the app has answered already.
        self.request_ended = trio.Event()
        self._app_scope = trio.CancelScope()
        self.protocol_error: ProtocolError | None = None
        self._pending = b""  # a response head waiting to go out with the first body part
        # Body parts already parsed from the buffer, and whether End came with them.
        self._early: collections.deque[bytes] = collections.deque()
        self._whole = False
        self._gone_early = False  # the buffer ended the request with an error or EOF
        self._parse_buffered()
        if self._whole:
            self.request_ended.set()
        self._body_send: trio.MemorySendChannel[bytes | None] | None = None
        self._body_receive: trio.MemoryReceiveChannel[bytes | None] | None = None
        if not (self._whole or self._gone_early):
            self._body_send, self._body_receive = trio.open_memory_channel[bytes | None](4)

    def _parse_buffered(self) -> None:
        """Take the request's frames that are already buffered, without waiting."""
        channel = self.frames.channel
        while True:
            event = channel.next_event()
            if isinstance(event, Body):
                self._early.append(event.data)
            elif isinstance(event, End):
                self._whole = True
                return
            elif event is NEED_DATA:
                return
            else:  # StreamError or EOF: the requester left mid-request
                self._gone_early = True
                return

    def scope(self) -> dict[str, Any]:
        path, _, query = self.head.target.partition("?")
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.head.headers]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.head.method.upper(),
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": headers,
            "client": (f"peer:{self.peer}", 0),
            "server": None,
            "extensions": {"gate.peer": self.peer, "gate.door": Door.PEER},
        }

    async def run(self, app: ASGIApp) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_requester)
            with self._app_scope:
                await self._call_app(app)
            nursery.cancel_scope.cancel()  # the exchange is over: stop reading

    async def _call_app(self, app: ASGIApp) -> None:
        try:
            await app(self.scope(), self.receive, self.send)
            if not self.response_done:  # the app returned without finishing: a bug
                await self._send_frame(
                    StreamError(code=ErrorCode.INTERNAL, message="response incomplete")
                )
        except _StreamGone:
            pass

    async def _read_requester(self) -> None:
        try:
            if self._gone_early:
                return
            if self._body_send is not None:
                async with self._body_send:
                    while True:
                        event = await self.frames.receive()
                        # Once the app has answered, it reads no more: the rest of the
                        # body is read and dropped (the channel is closed then).
                        if isinstance(event, Body):
                            with contextlib.suppress(trio.BrokenResourceError):
                                await self._body_send.send(event.data)
                        elif isinstance(event, End):
                            self.request_ended.set()
                            with contextlib.suppress(trio.BrokenResourceError):
                                await self._body_send.send(None)
                            break
                        else:  # StreamError (cancel) or the stream ended mid-request
                            return
            while True:  # the request is in: from now on only a cancel can arrive
                event = await self.frames.receive()
                if event is EOF:
                    # The requester finished its side after the response: nothing more.
                    await trio.sleep_forever()
                if isinstance(event, StreamError):
                    return
        except ProtocolError as exc:
            self.protocol_error = exc
        except Exception:
            pass
        finally:
            self.cancelled.set()
            self._app_scope.cancel()  # a cancelling or vanished requester stops the app

    async def receive(self) -> MutableMapping[str, Any]:
        if self.request_done or self._gone_early:
            # After the body, ASGI's next message is http.disconnect: when the requester
            # cancels or goes away.
            await self.cancelled.wait()
            return {"type": "http.disconnect"}
        if self._early or self._whole:
            await trio.lowlevel.checkpoint()
            early = self._early.popleft() if self._early else b""
            more = bool(self._early) or not self._whole
            self.request_done = not more
            return {"type": "http.request", "body": early, "more_body": more}
        assert self._body_receive is not None
        try:
            chunk = await self._body_receive.receive()
        except trio.EndOfChannel:
            await self.cancelled.wait()
            return {"type": "http.disconnect"}
        if chunk is None:
            self.request_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        """ASGI send: frames out. Each transport write crosses into Rust, so frames are
        batched: a complete body goes out with its head and End in one write; a stream's
        head and chunks go out as the app sends them."""
        kind = message["type"]
        if kind == "http.response.start":
            headers = [
                (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                for k, v in message.get("headers", [])
            ]
            self._pending = self._frame(ResponseHead(status=message["status"], headers=headers))
        elif kind == "http.response.body":
            body = bytes(message.get("body", b""))
            data, self._pending = self._pending, b""
            for offset in range(0, len(body), CHUNK):
                data += self._frame(Body(data=body[offset : offset + CHUNK]))
            if message.get("more_body", False):
                if data:
                    await self._write(data)
                return
            if not self.request_ended.is_set():
                # Head and body go now; End once the request's End is in. If the request
                # half fails instead, the reader cancels the app here and the stream is
                # failed with the reader's error (TRUNCATED for an early finish).
                if data:
                    await self._write(data)
                    data = b""
                if self._body_receive is not None:
                    self._body_receive.close()  # the reader drops the rest of the body
                await self.request_ended.wait()
            self.response_done = True
            data += self._frame(End())
            self.frames.channel.send_finish()
            # The stream's graceful close, right after the app returns, finishes our half.
            await self._write(data)

    def _frame(self, message: Any) -> bytes:
        if self.frames.channel.closed:  # the requester cancelled: nothing more goes out
            self.cancelled.set()
            raise _StreamGone()
        return self.frames.channel.send(message)

    async def _send_frame(self, message: Any) -> None:
        await self._write(self._frame(message))

    async def _write(self, data: bytes) -> None:
        try:
            await self.frames.stream.send_all(data)
        except Exception:  # the requester is gone: stop the app
            self.cancelled.set()
            raise _StreamGone() from None
