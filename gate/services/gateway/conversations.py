"""The conversations behind `previous_response_id`, for engines that keep none.

OpenAI's Responses API keeps each response it produced (unless `store: false`), so a
client may send only its new input with the id of the previous response. An engine
reached through Gate's Chat Completions translation keeps nothing, so Gate does: for
each such response, the turns it added (its new input and its output, as chat messages)
and the id of the response before it. A lookup walks that chain back, so a long
conversation costs memory once per turn, not once per response.

Bounded three ways, all fixed: MAX_RESPONSES entries, MAX_BYTES of turns (JSON-encoded
size), and MAX_IDLE seconds since an entry was stored or last used (using one touches
its whole chain). Past a bound the least recently used entries go first. A conversation
missing any link (evicted, expired, or never stored) is not found, and neither is one
another client made: the id alone does not open it. In memory only: a restart forgets.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

__all__ = ["MAX_BYTES", "MAX_IDLE", "MAX_RESPONSES", "Conversations"]

MAX_RESPONSES: Final = 1000
MAX_BYTES: Final = 64 * 1024 * 1024
MAX_IDLE: Final = 3600.0  # seconds


@dataclass(frozen=True, slots=True)
class _Entry:
    client: str
    previous: str | None
    turns: tuple[dict[str, Any], ...]
    size: int


class Conversations:
    def __init__(
        self,
        *,
        max_responses: int = MAX_RESPONSES,
        max_bytes: int = MAX_BYTES,
        max_idle: float = MAX_IDLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_responses, self.max_bytes, self.max_idle = max_responses, max_bytes, max_idle
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, _Entry]] = OrderedDict()  # oldest use first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._entries

    def history(self, response_id: str, client: str) -> list[dict[str, Any]] | None:
        """Every turn of the conversation up to and including `response_id`, oldest first,
        or None when any of it is gone or it belongs to another client."""
        self._expire()
        chain: list[tuple[str, _Entry]] = []  # newest first
        current: str | None = response_id
        # Bounded: each link is a distinct entry (an id is stored once, after its previous).
        while current is not None and len(chain) <= len(self._entries):
            found = self._entries.get(current)
            if found is None or found[1].client != client:
                return None
            chain.append((current, found[1]))
            current = found[1].previous
        if current is not None:
            return None
        now = self._clock()
        for entry_id, entry in reversed(chain):  # used now: the newest response last
            self._entries[entry_id] = (now, entry)
            self._entries.move_to_end(entry_id)
        return [dict(turn) for _, entry in reversed(chain) for turn in entry.turns]

    def keep(
        self,
        response_id: str,
        client: str,
        previous: str | None,
        turns: Sequence[dict[str, Any]],
    ) -> None:
        """Remember the turns `response_id` added after `previous`. A single response
        larger than the whole byte bound is not kept."""
        size = len(msgspec.json.encode(list(turns)))
        if size > self.max_bytes:
            return
        self._drop(response_id)
        self._entries[response_id] = (self._clock(), _Entry(client, previous, tuple(turns), size))
        self.bytes += size
        self._expire()
        while len(self._entries) > self.max_responses or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _expire(self) -> None:
        cutoff = self._clock() - self.max_idle
        while self._entries:
            oldest, (used, _) = next(iter(self._entries.items()))
            if used >= cutoff:
                break
            self._drop(oldest)

    def _drop(self, response_id: str) -> None:
        found = self._entries.pop(response_id, None)
        if found is not None:
            self.bytes -= found[1].size
