"""Live events for the control plane: what the node does, as it happens.

`EventBus.publish` is called on the request path, so it is synchronous and O(1), and
costs one check when nobody listens. Each subscriber has a bounded queue; one that
cannot keep up loses events (counted, and told so in a `dropped` event) rather than
slowing the node or growing its memory. `close()` ends every subscription, so open
event streams do not hold up shutdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from gate.logs import timestamp

__all__ = ["Event", "EventBus", "EventLogHandler"]

QUEUE: Final = 1000


class Event:
    __slots__ = ("data", "kind", "ts")

    def __init__(self, kind: str, data: dict[str, Any]) -> None:
        self.kind, self.data, self.ts = kind, data, time.time()


class _Subscriber:
    __slots__ = ("dropped", "receive", "send")

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Event](QUEUE)
        self.dropped = 0


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._closed = False

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        event = Event(kind, data)
        for subscriber in self._subscribers:
            try:
                subscriber.send.send_nowait(event)
            except trio.WouldBlock:
                subscriber.dropped += 1

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncGenerator[Event, None]]:
        subscriber = _Subscriber()
        if self._closed:
            subscriber.send.close()
        else:
            self._subscribers.add(subscriber)
        events = _events(subscriber)
        try:
            yield events
        finally:
            self._subscribers.discard(subscriber)
            subscriber.send.close()
            await events.aclose()

    def close(self) -> None:
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.send.close()
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


async def _events(subscriber: _Subscriber) -> AsyncGenerator[Event, None]:
    reported = 0
    async for event in subscriber.receive:
        if subscriber.dropped != reported:  # tell the reader it missed some
            yield Event("dropped", {"count": subscriber.dropped - reported})
            reported = subscriber.dropped
        yield event


class EventLogHandler(logging.Handler):
    """Log records as `log` events (for `gate logs --follow` and the web UI)."""

    def __init__(self, bus: EventBus, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.bus = bus

    def emit(self, record: logging.LogRecord) -> None:
        if not self.bus.subscribers:
            return
        try:
            message = record.getMessage()
        except Exception:  # a broken log call must not break the caller
            return
        # `ts` as in the log file, so a reader of both (`gate logs -f`) can match them.
        self.bus.publish(
            "log",
            {
                "ts": timestamp(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": message,
            },
        )
