"""The client's response: relaying an engine's or a peer's bytes as they arrive
(`pass_through`), an engine's error status told in the client's dialect
(`answer_engine_error`), how far the response got (`ResponseTracker`), and how a
response that started ends when it cannot end well (`AbortResponse`, `end_cut_stream`).

A response that started and then failed is never completed: a stream gets an error
event in the client's dialect (what an SDK reads and raises on) and then the connection
is dropped without the terminating chunk (what a client that checks only the HTTP
framing sees as a failure); a body with a length is dropped short of its length.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import aclosing
from typing import Any, Final

import msgspec
import trio

from gate.dialects import encode_event
from gate.dialects.errors import (
    anthropic_error,
    anthropic_stream_error,
    openai_error,
    openai_stream_error,
)
from gate.services.engines.client import HOP_BY_HOP, StreamedResponse, UpstreamError
from gate.services.engines.registry import Dialect
from gate.services.gateway.exchange import ApiError, Exchange
from gate.services.gateway.stream_usage import UsageStrip
from gate.services.gateway.usage_tap import UsageTap
from gate.services.http.router import Send, send_json

__all__ = [
    "AbortResponse",
    "ResponseTracker",
    "answer_engine_error",
    "end_cut_stream",
    "end_stream_with_error",
    "error_message",
    "is_event_stream",
    "pass_through",
]

# hypercorn writes its own date header; a second one from the engine would be a duplicate.
_DROP_RESPONSE_HEADERS: Final = HOP_BY_HOP | {b"date"}
# How long a cancelled stream may take to write its closing error event.
_LAST_WORD_TIMEOUT: Final = 1.0
# The most of an engine's error body read, and of a text one kept in the message.
_ERROR_BODY_LIMIT: Final = 1024 * 1024
_ERROR_TEXT_LIMIT: Final = 500


async def pass_through(
    upstream: StreamedResponse,
    send: Send,
    exchange: Exchange,
    dialect: Dialect,
    subject: str = "engine",
) -> None:
    """The engine speaks the client's dialect: relay its bytes as they arrive. An error
    status is the exception: its body is told in the client's dialect unless it already
    is (`answer_engine_error`); `subject` names who answered ("engine X", "peer Y")."""
    if upstream.status >= 400:
        await answer_engine_error(upstream, send, exchange, dialect, subject)
        return
    content_type = upstream.header(b"content-type") or b""
    streaming = content_type.startswith(b"text/event-stream")
    length = None if streaming else upstream.content_length
    headers = [(k, v) for k, v in upstream.headers if k not in _DROP_RESPONSE_HEADERS]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    tap = UsageTap(dialect, streaming) if upstream.status < 400 else None
    strip = UsageStrip() if streaming and exchange.usage_asked else None
    remaining = length
    last = b""  # the last part relayed
    try:
        async with aclosing(upstream.aiter_body()) as body_chunks:
            async for chunk in body_chunks:
                exchange.first_byte()
                last = chunk or last
                if tap is not None:
                    tap.feed(chunk)
                if strip is not None:  # not for the client: usage it did not ask for
                    chunk = strip.feed(chunk)
                    if not chunk:
                        continue
                if remaining is not None:
                    remaining -= len(chunk)
                    await send(
                        {
                            "type": "http.response.body",
                            "body": chunk,
                            "more_body": remaining > 0,
                        }
                    )
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if tap is not None and tap.ended:
                    exchange.answered = True
    except UpstreamError as exc:
        exchange.status, exchange.error = 502, f"engine failed mid-response: {exc}"
        # The error event for SDKs (unless the stream relayed one already: a peer whose
        # engine failed sends its own, then aborts), then the abort (`AbortResponse`).
        if streaming and not _ends_with_error_event(last):
            await send(
                {
                    "type": "http.response.body",
                    "body": _stream_error(dialect, exc),
                    "more_body": True,
                }
            )
        raise AbortResponse from None  # the client sees a broken body, not a short one
    final = strip.rest() if strip is not None else b""
    if remaining is None or remaining > 0 or length == 0:
        await send({"type": "http.response.body", "body": final, "more_body": False})
    if tap is not None:
        exchange.tokens_in, exchange.tokens_out = tap.result()
        if not tap.reported and exchange.tokens_out is not None:
            exchange.tokens_source = "counted"  # one per streamed token


async def answer_engine_error(
    upstream: StreamedResponse, send: Send, exchange: Exchange, dialect: Dialect, subject: str
) -> None:
    """An engine's (or a peer's) error status, answered with the same status in the
    client's dialect: a body already in it goes unchanged; any other (FastAPI's
    `{"detail": ...}`, plain text, another dialect's error) is rewritten into it, keeping
    the engine's message ("engine X: Not Found"). Clients such as the openai SDK read
    only their own dialect's shape and report anything else as having no body."""
    status = upstream.status
    try:
        body = await upstream.read(limit=_ERROR_BODY_LIMIT)
    except UpstreamError:
        body = None
    data: Any = None
    if body:
        try:
            data = msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):
            data = None
    message = f"{subject}: {error_message(data, body, status)}"
    exchange.status, exchange.error = status, message
    retry_after = upstream.header(b"retry-after")
    headers = [(b"retry-after", retry_after)] if retry_after is not None else []
    if body is not None and _in_dialect(data, dialect):
        content_type = upstream.header(b"content-type") or b"application/json"
        headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    await send_json(send, status, ApiError(status, message).body(dialect), headers)


def error_message(data: Any, body: bytes | None = None, status: int = 500) -> str:
    """The message inside an engine's error: either dialect's error body, llama.cpp's
    variants, FastAPI's `detail`, else the body's text, else the status."""
    if isinstance(data, Mapping):
        error = data.get("error", data)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        detail = data.get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:  # FastAPI's validation errors: a list of objects
            return msgspec.json.encode(detail).decode()[:_ERROR_TEXT_LIMIT]
    if data is None and body:
        text = body.decode("utf-8", "replace").strip()
        if text:
            return text[:_ERROR_TEXT_LIMIT]
    return f"answered HTTP {status}"


def _in_dialect(data: Any, dialect: Dialect) -> bool:
    """Whether `data` is an error body in `dialect`'s shape (gate.dialects.errors)."""
    if not isinstance(data, Mapping):
        return False
    error = data.get("error")
    if not isinstance(error, Mapping) or not isinstance(error.get("message"), str):
        return False
    if dialect is Dialect.ANTHROPIC:
        return data.get("type") == "error" and isinstance(error.get("type"), str)
    return True


class AbortResponse(Exception):
    """Raised after the response started and cannot end well: the server drops the
    connection without the body's last part, so a client reading a Content-Length body
    sees it cut off, and one reading a chunked stream sees no terminating chunk."""


def is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a response head's `headers` say it is a server-sent event stream."""
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in headers
    )


class ResponseTracker:
    """Wraps `send` to know how far the response got: once its head went out, errors
    cannot be answered with a status; once its last body part went out, the server
    closes the request, and the http.disconnect that follows is not a client leaving."""

    __slots__ = ("_send", "finished", "started", "streaming")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False
        self.streaming = False  # the response is a server-sent event stream

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.streaming = is_event_stream(message.get("headers", ()))
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


async def end_cut_stream(response: ResponseTracker, dialect: Dialect, exchange: Exchange) -> None:
    """The node is stopping and its drain time ran out mid-stream: send an error event in
    the client's dialect, so an SDK tells the failure ("Gate is shutting down") rather
    than a network fault; the response is then left unfinished, and the server drops the
    connection without the terminating chunk, as for any stream that failed. (A client
    that left cancels inside `Gateway._forward`, so this runs only for a cancellation
    from outside: the shutdown.)"""
    if response.finished:
        return
    exchange.status, exchange.error = 503, "cut short: Gate is shutting down"
    await end_stream_with_error(response, dialect, exchange.error)


async def end_stream_with_error(
    response: ResponseTracker, dialect: Dialect, message: str, status: int | None = None
) -> None:
    """A failure after a stream's head went out: `message` as the dialect's error event,
    typed as an error of `status` would be (the caller then leaves the response
    unfinished, so it is aborted). Nothing for a response that finished, or with a
    length (the cut connection tells its client)."""
    if response.finished or not response.streaming:
        return
    with trio.move_on_after(_LAST_WORD_TIMEOUT, shield=True):
        await response.send(
            {
                "type": "http.response.body",
                "body": _stream_error(dialect, message, status),
                "more_body": True,
            }
        )


def _ends_with_error_event(chunk: bytes) -> bool:
    """Whether `chunk` ends with a whole error event, in either dialect's form or the
    Responses API's (`response.failed`, what Gate's translation of it ends a failure with)."""
    chunk = chunk.replace(b"\r\n", b"\n")
    if not chunk.endswith(b"\n\n"):
        return False
    event = chunk.rstrip(b"\n").rpartition(b"\n\n")[2]
    return event.startswith((b"event: error\n", b'data: {"error":', b"event: response.failed\n"))


def _stream_error(dialect: Dialect, failure: Exception | str, status: int | None = None) -> bytes:
    """An error event ending a stream; `failure` is the engine's error or the message,
    and `status` the one the response would have had if its head were still to go (its
    type follows it, as in an error body); without one it is the engine failing."""
    message = failure if isinstance(failure, str) else f"the engine failed mid-stream: {failure}"
    if dialect is Dialect.ANTHROPIC:
        if status is None:
            name, data = anthropic_stream_error(message)
        else:
            name, data = "error", anthropic_error(status, message)
        return encode_event(msgspec.json.encode(data), name)
    data = openai_stream_error(message) if status is None else openai_error(status, message)
    return encode_event(msgspec.json.encode(data))
