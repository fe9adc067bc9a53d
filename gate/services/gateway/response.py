"""The client's response: relaying an engine's or a peer's bytes as they arrive
(`pass_through`), how far the response got (`ResponseTracker`), and how a response that
started ends when it cannot end well: an error event in the client's dialect on a stream,
a dropped connection on a body with a length (`AbortResponse`, `end_cut_stream`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from contextlib import aclosing
from typing import Any, Final

import msgspec
import trio

from gate.dialects import encode_event
from gate.dialects.errors import anthropic_stream_error, openai_stream_error
from gate.services.engines.client import HOP_BY_HOP, StreamedResponse, UpstreamError
from gate.services.engines.registry import Dialect
from gate.services.gateway.exchange import Exchange
from gate.services.gateway.usage_tap import UsageTap
from gate.services.http.router import Send

__all__ = ["AbortResponse", "ResponseTracker", "end_cut_stream", "pass_through"]

# hypercorn writes its own date header; a second one from the engine would be a duplicate.
_DROP_RESPONSE_HEADERS: Final = HOP_BY_HOP | {b"date"}
# How long a cancelled stream may take to write its closing error event.
_LAST_WORD_TIMEOUT: Final = 1.0


async def pass_through(
    upstream: StreamedResponse,
    send: Send,
    exchange: Exchange,
    dialect: Dialect,
) -> None:
    """The engine speaks the client's dialect: relay its bytes as they arrive."""
    content_type = upstream.header(b"content-type") or b""
    streaming = content_type.startswith(b"text/event-stream")
    length = None if streaming else upstream.content_length
    headers = [(k, v) for k, v in upstream.headers if k not in _DROP_RESPONSE_HEADERS]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    tap = UsageTap(dialect, streaming) if upstream.status < 400 else None
    remaining = length
    try:
        async with aclosing(upstream.aiter_body()) as body_chunks:
            async for chunk in body_chunks:
                exchange.first_byte()
                if tap is not None:
                    tap.feed(chunk)
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
    except UpstreamError as exc:
        exchange.status, exchange.error = 502, f"engine failed mid-response: {exc}"
        if not streaming:
            raise AbortResponse from None  # the client sees a broken body, not a short one
        await send(
            {
                "type": "http.response.body",
                "body": _stream_error(dialect, exc),
                "more_body": False,
            }
        )
        return
    if remaining is None or remaining > 0 or length == 0:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    if tap is not None:
        exchange.tokens_in, exchange.tokens_out = tap.result()


class AbortResponse(Exception):
    """Raised after the response started and cannot end well: the server drops the
    connection, so a client reading a Content-Length body sees it cut off, not complete."""


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
            self.streaming = any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in message.get("headers", ())
            )
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


async def end_cut_stream(response: ResponseTracker, dialect: Dialect, exchange: Exchange) -> None:
    """The node is stopping and its drain time ran out mid-stream: end the stream with an
    error event in the client's dialect, so the client sees a failure, not a cut
    connection it may take for a network fault. (A client that left cancels inside
    `Gateway._forward`, so this runs only for a cancellation from outside: the shutdown.)"""
    if response.finished:
        return
    exchange.status, exchange.error = 503, "cut short: Gate is shutting down"
    if not response.streaming:
        return  # a body with a length: the cut connection tells the client already
    with trio.move_on_after(_LAST_WORD_TIMEOUT, shield=True):
        await response.send(
            {
                "type": "http.response.body",
                "body": _stream_error(dialect, exchange.error),
                "more_body": False,
            }
        )


def _stream_error(dialect: Dialect, failure: Exception | str) -> bytes:
    """An error event ending a stream; `failure` is the engine's error or the message."""
    message = failure if isinstance(failure, str) else f"the engine failed mid-stream: {failure}"
    if dialect is Dialect.ANTHROPIC:
        name, data = anthropic_stream_error(message)
        return encode_event(msgspec.json.encode(data), name)
    return encode_event(msgspec.json.encode(openai_stream_error(message)))
