"""The TXT records the relay has published for nodes' DNS-01 challenges, and their end
(spec §6.4).

- Before anything is published, a node's request passes a token bucket of its own:
  `per_minute` requests at once, refilled at that many a minute (`RateLimited` past it),
  so one node cannot spend the zone's API quota.
- A record is removed when its node activates its name (`activate_domain`, which a node
  sends once its certificate is issued), when the node's last connection to the relay
  ends, or `lifetime` seconds after it was published: whichever comes first. A publish
  cut short, or failed after the request may have been carried out, is removed at once.
- Kept in memory: a clean stop removes every record (`remove_all`); after a crash they
  stay, unless the backend can find them at the next start (`remove_leftovers`).

Every removal runs in one task (`run`): a trigger only marks records due and wakes it,
so the triggers are plain calls that never wait on a DNS API. A removal that fails is
tried again `_REMOVE_TRIES` times, `_REMOVE_RETRY` seconds apart, then logged as left
behind."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from gate.protocol import NodeId
from gate.services.gateway.limits import TokenBucket
from gate.services.relay.dns.backend import DnsBackend, DnsError, TxtRecord

__all__ = ["OUTCOMES", "ChallengeRecords", "RateLimited"]

log = logging.getLogger("gate.relay")

# dns_challenge requests by how they ended: every one counted, zero or not, from the
# first scrape on.
OUTCOMES: Final = ("published", "refused", "rate_limited", "failed")
_REMOVE_TRIES: Final = 3
_REMOVE_RETRY: Final = 30.0
_MAX_BUCKETS: Final = 1024  # past this, full buckets (same as new ones) are dropped


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many DNS challenges; retry in {math.ceil(retry_after)} s")
        self.retry_after = retry_after


@dataclass(eq=False)  # each is itself: a node may publish one value twice
class _Published:
    node: NodeId
    record: TxtRecord
    due: float  # trio.current_time() at which it goes
    tries: int = 0
    publishing: bool = False  # the backend has not answered yet: not to be removed yet


class ChallengeRecords:
    def __init__(self, backend: DnsBackend | None, *, lifetime: float, per_minute: int) -> None:
        self.backend = backend
        self.lifetime = lifetime
        self.per_minute = per_minute
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.backend_errors = 0  # failed calls to the backend: publish, remove, leftovers
        self.removed = 0  # records removed (after a publish that may have made one, too)
        self._records: list[_Published] = []
        self._buckets: dict[NodeId, TokenBucket] = {}
        self._wake = trio.Event()
        # Set while run() looks for an earlier run's leftovers: a record published then
        # would carry the same comment and be taken for one.
        self._sweeping: trio.Event | None = None

    def __len__(self) -> int:
        """Records published, or being published, and not removed yet."""
        return len(self._records)

    def refuse(self) -> None:
        """Count a dns_challenge the relay refused (another node's name, no backend)."""
        self.outcomes["refused"] += 1

    def admit(self, node: NodeId) -> None:
        """Take one of the node's tokens, or raise RateLimited (nothing taken)."""
        now = trio.current_time()
        bucket = self._buckets.get(node)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets = {n: b for n, b in self._buckets.items() if not b.full(now)}
            bucket = self._buckets[node] = TokenBucket(self.per_minute / 60.0, self.per_minute)
        wait = bucket.try_acquire(now)
        if wait:
            self.outcomes["rate_limited"] += 1
            raise RateLimited(wait)

    async def publish(self, node: NodeId, name: str, value: str) -> None:
        """Publish `value` at `name` for `node`; DnsError if the backend could not.

        The record is on the list from before the backend is asked, without its handle,
        and removal waits for the publish to end: a publish cut short (the node's
        stream ended, the relay stops) or failed in a way that may still have made the
        record (DnsError.maybe_made) is removed at once (the backend finds it by name
        and value); one released meanwhile (the node left) goes as soon as it is made."""
        if self.backend is None:
            raise DnsError("this relay publishes no DNS records")
        if self._sweeping is not None:
            await self._sweeping.wait()
        entry = _Published(node, TxtRecord(name, value), trio.current_time() + self.lifetime)
        entry.publishing = True
        self._records.append(entry)
        try:
            entry.record = await self.backend.publish_txt(name, value)
        except BaseException as exc:
            entry.due = trio.current_time()
            if isinstance(exc, DnsError):
                self.outcomes["failed"] += 1
                self.backend_errors += 1
                if not exc.maybe_made:  # nothing reached the provider, or it refused
                    self._forget(entry)
            raise
        finally:
            entry.publishing = False
            self._wake.set()  # due now, or its lifetime may be the next thing due
        self.outcomes["published"] += 1

    def release(self, node: NodeId) -> None:
        """The node is done with its records (activated, or gone): remove them now."""
        self._due_now(lambda p: p.node == node)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Remove what an earlier run left, then each record as it falls due; forever.
        Started at once: the relay does not wait on the DNS API to serve, but a publish
        waits for that first look (bounded by the backend's tries)."""
        self._sweeping = sweeping = trio.Event()
        task_status.started()
        try:
            if self.backend is not None and (left := await self.backend.remove_leftovers()):
                log.info("removed DNS records an earlier run left", extra={"count": left})
        except DnsError as exc:
            self.backend_errors += 1
            log.warning("could not look for DNS records left behind", extra={"error": str(exc)})
        finally:
            sweeping.set()
        while True:
            self._wake = trio.Event()  # before removing: a trigger meanwhile is kept
            await self._remove_due()
            next_due = min((p.due for p in self._records), default=math.inf)
            with trio.move_on_at(next_due):
                await self._wake.wait()

    async def remove_all(self) -> None:
        """Remove every record now (a clean stop); the caller bounds the time."""
        self._due_now(lambda _: True)
        for p in self._records:
            p.tries = _REMOVE_TRIES - 1  # one try each: the relay is stopping
        await self._remove_due()

    def _due_now(self, which: Callable[[_Published], bool]) -> None:
        now = trio.current_time()
        for p in self._records:
            if which(p) and p.due > now:
                p.due = now
        self._wake.set()

    async def _remove_due(self) -> None:
        # A record leaves the list only once removed (or given up on), so a removal cut
        # short (the relay stopping) leaves it for remove_all.
        while due := [
            p for p in self._records if p.due <= trio.current_time() and not p.publishing
        ]:
            for p in due:
                assert self.backend is not None
                try:
                    await self.backend.remove_txt(p.record)
                except DnsError as exc:
                    self.backend_errors += 1
                    p.tries += 1
                    p.due = trio.current_time() + _REMOVE_RETRY
                    if p.tries >= _REMOVE_TRIES:
                        self._forget(p)
                    log.warning(
                        "could not remove a DNS record",
                        extra={
                            "dns_name": p.record.name,
                            "error": str(exc),
                            "left_behind": p.tries >= _REMOVE_TRIES,
                        },
                    )
                else:
                    if self._forget(p):
                        self.removed += 1
                        log.info(
                            "DNS challenge record removed",
                            extra={"node": str(p.node), "dns_name": p.record.name},
                        )

    def _forget(self, p: _Published) -> bool:
        if p in self._records:  # not already removed by a concurrent remove_all
            self._records.remove(p)
            return True
        return False
