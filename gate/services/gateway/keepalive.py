"""Keepalives in the silences of a translated stream.

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
Pass-through streams never come here: they stay byte for byte the engine's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from gate.services.http.router import Send

__all__ = ["KeptAlive", "kept_alive"]


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
