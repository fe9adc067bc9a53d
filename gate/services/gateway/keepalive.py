"""Keepalives in the silences of a translated stream, and before the engine answers.

An engine reading a long prompt can be silent for minutes before its first token (and
a slow one between tokens); clients and proxies give up on a stream that says nothing
(Claude Code did after 378 s). The Anthropic API sends `ping` events for this, so a
translated stream does too: whenever its client has heard nothing for `interval`
seconds, it gets the translator's KEEPALIVE (a ping, or for a Responses client an SSE
comment, as that grammar has no such event).

Theory of operation: every write of the stream's body goes through one `KeptAlive`,
under one lock, each a whole number of events, and a task beside the relay sends the
keepalive under the same lock. So a keepalive never lands inside an event, and none
follows the stream's last event (`send(..., last=True)` closes it under the lock).
Pass-through streams get no keepalives between their events: they stay byte for byte
the engine's.

Some engines send nothing at all, not even their response's head, until their first
token (Ollama does; so does any engine still loading the model), and clients give up on
a response whose head has not come: the Anthropic SDKs, Claude Code's among them, after
10 minutes. So a stream whose engine has not answered `interval` seconds after the
request went (a translated one, or one relayed from a local engine) is opened by
`EarlyOpening`: the 200 and the event stream's head go out, then a keepalive every
`interval` seconds, until the translation or the relay sends its own head (which then
does not go out again) and its events. Its timer is rung by the task that already
watches each request for its client leaving, so a request pays no task for it. What
the engine answers after that must fit in the stream: an error status, or a whole body
instead of a stream, becomes an `ApiError` with the engine's message, which the
pipeline answers after the head as every stream's failure: the dialect's error event,
then the aborted response.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from gate.dialects import ChatStreamToMessagesStream
from gate.dialects.sse import SSE_KEEPALIVE
from gate.services.engines.registry import Dialect
from gate.services.gateway.exchange import ApiError
from gate.services.gateway.response import error_message, is_event_stream
from gate.services.http.router import Send

__all__ = ["EarlyOpening", "KeptAlive", "keepalive_for", "kept_alive"]


def keepalive_for(dialect: Dialect) -> bytes:
    """What a stream to a client of `dialect` says in its silences: Anthropic's `ping`,
    else an SSE comment, which SSE parsers skip."""
    if dialect is Dialect.ANTHROPIC:
        return ChatStreamToMessagesStream.KEEPALIVE
    return SSE_KEEPALIVE


class KeptAlive:
    """A stream's body writes, with `keepalive` sent after `interval` s without one."""

    def __init__(self, send: Send, keepalive: bytes, interval: float) -> None:
        self._send, self._keepalive, self._interval = send, keepalive, interval
        self._lock = trio.Lock()
        self._last_write = trio.current_time()
        self._closed = False

    async def send(self, body: bytes, *, last: bool = False) -> None:
        """Write whole events; `last`: they end the stream, no keepalive follows."""
        async with self._lock:
            if self._closed:
                raise RuntimeError("the stream's last event already went out")
            self._closed = last
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
            self._last_write = trio.current_time()

    async def run(self) -> None:
        """Send the keepalives until the stream closes (or this task is cancelled)."""
        while True:
            await trio.sleep_until(self._last_write + self._interval)
            async with self._lock:
                if self._closed:
                    return
                if trio.current_time() < self._last_write + self._interval:
                    continue  # a write went out while this waited for the lock
                await self._send(
                    {"type": "http.response.body", "body": self._keepalive, "more_body": True}
                )
                self._last_write = trio.current_time()


@asynccontextmanager
async def kept_alive(send: Send, keepalive: bytes, interval: float) -> AsyncIterator[KeptAlive]:
    """A `KeptAlive` whose keepalives run while the block does. What the block raises
    leaves grouped (a nursery's): catch what must leave as itself inside it."""
    stream = KeptAlive(send, keepalive, interval)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.run)
        yield stream
        nursery.cancel_scope.cancel()


class _Head(enum.Enum):
    WAITING = "waiting"  # nothing sent yet: the relay may still send its own head
    OPENED = "opened"  # the head went out early; keepalives until the relay's comes
    REFUSED = "refused"  # ...and the engine's answer did not fit: its body is the error
    HANDED_OVER = "handed over"  # the relay writes the stream


class EarlyOpening:
    """A stream's response, opened early when its engine is slow to answer (see the
    module's doc): `send` is what the relay writes through once `arm`ed. Its timer is an
    alarm of the request's disconnect watcher (`router.cancel_on_disconnect`), which
    rings it: no task of its own."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = trio.Lock()
        self._head = _Head.WAITING
        self._refused = 0  # the status of the relay's head that did not fit
        self._keepalive = b""
        self._interval = math.inf
        self._headers: Callable[[], list[tuple[bytes, bytes]]] = list
        self._deadline = math.inf
        self._scope: trio.CancelScope | None = None

    def arm(
        self, keepalive: bytes, interval: float, headers: Callable[[], list[tuple[bytes, bytes]]]
    ) -> None:
        """Open the response if the engine has not answered in `interval` seconds; then
        `keepalive` every `interval` seconds until the relay sends its head."""
        self._keepalive, self._interval, self._headers = keepalive, interval, headers
        self._set_deadline(trio.current_time() + interval)

    def waiting(self) -> trio.CancelScope:
        self._scope = trio.CancelScope(deadline=self._deadline)
        return self._scope

    async def ring(self) -> None:
        async with self._lock:
            if self._head is _Head.WAITING:
                start = {"type": "http.response.start", "status": 200, "headers": self._headers()}
                await self._send(start)
                self._head = _Head.OPENED
            elif self._head is _Head.OPENED:
                body = {"type": "http.response.body", "body": self._keepalive, "more_body": True}
                await self._send(body)
            else:
                self._set_deadline(math.inf)
                return
            self._set_deadline(trio.current_time() + self._interval)

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if self._scope is not None:
            self._scope.deadline = deadline

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self._head is _Head.HANDED_OVER:
            # Without the lock: it was handed over under it, and `ring` writes nothing
            # from then on. (A lock costs two scheduler passes a write.)
            await self._send(message)
            return
        async with self._lock:  # against `ring`; only the relay's task sends before then
            if message["type"] != "http.response.start":
                if self._head is _Head.REFUSED:
                    raise self._failure(message.get("body", b""))
                await self._send(message)
            elif self._head is _Head.WAITING:
                self._head = _Head.HANDED_OVER
                self._set_deadline(math.inf)
                await self._send(message)
            elif message["status"] < 400 and is_event_stream(message.get("headers", ())):
                self._head = _Head.HANDED_OVER  # its head went out already
                self._set_deadline(math.inf)
            else:
                self._head, self._refused = _Head.REFUSED, message["status"]
                self._set_deadline(math.inf)

    def _failure(self, body: bytes) -> ApiError:
        """The error a refused head's body tells: the engine's, in the client's dialect."""
        if self._refused < 400:  # a whole answer where a stream was asked for
            return ApiError(502, "the engine answered a stream with a whole body")
        try:
            data = msgspec.json.decode(body) if body else None
        except (msgspec.DecodeError, RecursionError):
            data = None
        return ApiError(self._refused, error_message(data, body, self._refused))
