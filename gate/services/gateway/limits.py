"""Admission limits on the request path: per-client rate, and concurrency (in flight).

Theory of operation
-------------------
Everything here is sync, allocation-light and O(1) per request; time is an argument
(callers pass ``trio.current_time()``), so the policies are pure and tests need no clock.
Gate runs on one trio thread, so there are no locks.

`TokenBucket` is a token bucket of ``burst`` tokens refilled at ``rate`` tokens per
second, kept as one float in the GCRA form ("theoretical arrival time", ``tat``): the
bucket is empty at ``tat`` and full at any time ``>= tat``, and it holds
``burst - (tat - now) * rate`` tokens in between. Admitting ``cost`` tokens moves
``tat`` to ``max(tat, now) + cost / rate``; that is allowed while the debt
``tat - now`` stays within ``burst / rate`` (give or take a float rounding, `_SLACK`).
So over any interval of length ``t`` a bucket admits at most ``burst + rate * t``
tokens, and a refused caller is told exactly when the same request would pass (the
``Retry-After``). A refusal changes nothing.

`ClientRateLimiter` keeps one bucket per client, created on first use, in LRU order. A
bucket that is full behaves exactly like a new one, so dropping it loses nothing: on
each new client the least recently used buckets are dropped while they are full, and
past ``max_clients`` the least recently used one is dropped regardless (that client then
starts again with a full burst; it is also the one idle the longest). Memory is bounded
by ``max_clients`` whatever clients send.

`InFlightLimiter` counts requests between `InFlightLimiter.try_enter` and
`InFlightLimiter.leave`; a streamed response holds its place until its last byte.

`PeerLimiter` is what one trusted peer may ask of this node: a rate bucket of its own
and a cap on its requests in flight, counted between `PeerLimiter.enter` and
`PeerLimiter.leave`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Final, Literal

from gate.errors import GateError
from gate.protocol.errors import ErrorCode

__all__ = [
    "ClientRateLimiter",
    "InFlightLimiter",
    "LimitExceeded",
    "LimitScope",
    "PeerLimiter",
    "TokenBucket",
    "retry_after_value",
]

LimitScope = Literal["client", "global", "provider"]
_SCOPES: Final = frozenset({"client", "global", "provider"})
# Float slack when comparing times, in seconds: ``(now + d) - now`` is not exactly ``d``.
# About 4 ulps of ``now`` plus 1 ns; pass a monotonic clock such as trio.current_time()
# (whose values are small) rather than the wall clock, to keep it negligible.
_SLACK: Final = 1e-9
_SLACK_PER_SECOND: Final = 1e-15
# How many full buckets one new client may sweep out of the LRU end: keeps check() O(1).
_SWEEP: Final = 2


class LimitExceeded(GateError):
    """A request was refused by a limit; answer 429 with ``Retry-After``.

    ``scope`` names the limit that refused it: "client" (this client's rate), "global"
    (the node's concurrency) or "provider" (one provider's concurrency).
    """

    code: Final = ErrorCode.RATE_LIMITED

    def __init__(self, scope: LimitScope, retry_after: float, message: str | None = None) -> None:
        if scope not in _SCOPES:
            raise ValueError(f"unknown limit scope {scope!r}")
        super().__init__(message or f"{scope} limit exceeded; retry after {retry_after:.3g}s")
        self.scope: LimitScope = scope
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> bytes:
        return retry_after_value(self.retry_after)

    def __repr__(self) -> str:
        return f"LimitExceeded(scope={self.scope!r}, retry_after={self.retry_after!r})"


def retry_after_value(seconds: float) -> bytes:
    """``Retry-After`` value: whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3)."""
    if not math.isfinite(seconds):
        seconds = 3600.0  # a request that can never pass: tell the client to back off
    return str(max(1, math.ceil(seconds))).encode()


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``rate <= 0`` means unlimited.

    Starts full. Pure: every call takes ``now`` (any monotonic clock, in seconds); a
    ``now`` earlier than a previous one is treated as that previous time.
    """

    __slots__ = ("_interval", "_limit", "_tat", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        if self.rate > 0:
            if not (math.isfinite(self.rate) and math.isfinite(self.burst) and self.burst > 0):
                raise ValueError(f"a rate limit needs a finite rate and burst > 0, got {burst!r}")
            self._interval = 1.0 / self.rate  # seconds per token
            self._limit = self.burst * self._interval  # the largest debt, in seconds
        else:
            self._interval = self._limit = 0.0
        self._tat = -math.inf  # full

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def try_acquire(self, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 if allowed, else the seconds until it would be.

        ``math.inf`` if it never will be (``cost > burst``).
        """
        if self._interval == 0.0:
            return 0.0
        tat = self._tat if self._tat > now else now
        new_tat = tat + cost * self._interval
        excess = new_tat - now - self._limit
        if excess <= _SLACK + _SLACK_PER_SECOND * abs(now):
            self._tat = new_tat
            return 0.0
        return math.inf if cost > self.burst else excess

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (``math.inf`` if unlimited)."""
        if self._interval == 0.0:
            return math.inf
        debt = self._tat - now
        return self.burst if debt <= 0.0 else max(0.0, self.burst - debt * self.rate)

    def full(self, now: float) -> bool:
        """Whether the bucket is full at ``now``: then it is the same as a new one."""
        return self._tat <= now

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, burst={self.burst!r})"


class ClientRateLimiter:
    """One `TokenBucket` per client key; ``rate_per_minute <= 0`` means unlimited.

    Memory is bounded by ``max_clients`` buckets (see the module docstring).
    """

    __slots__ = ("_buckets", "_rate", "burst", "max_clients", "rate_per_minute")

    def __init__(self, rate_per_minute: float, burst: int, *, max_clients: int = 10_000) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if rate_per_minute > 0 and burst < 1:
            raise ValueError(f"a client rate limit needs burst >= 1, got {burst!r}")
        self.rate_per_minute = float(rate_per_minute)
        self.burst = burst
        self.max_clients = max_clients
        self._rate = self.rate_per_minute / 60.0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def unlimited(self) -> bool:
        return self._rate <= 0

    def check(self, client: str, now: float) -> float:
        """Admit one request from ``client``: 0.0 if allowed, else the Retry-After seconds."""
        if self._rate <= 0:
            return 0.0
        buckets = self._buckets
        bucket = buckets.get(client)
        if bucket is None:
            bucket = self._new_bucket(client, now)
        else:
            buckets.move_to_end(client)
        return bucket.try_acquire(now)

    def admit(self, client: str, now: float) -> None:
        """Admit one request from ``client`` or refuse it (LimitExceeded, with the wait)."""
        wait = self.check(client, now)
        if wait > 0:
            raise LimitExceeded("client", wait, f"rate limit for {client} exceeded")

    def with_rate(self, rate_per_minute: float, burst: int) -> ClientRateLimiter:
        """This limiter when its rate is unchanged (its buckets keep their debts), else a
        new one, every bucket full."""
        if (self.rate_per_minute, self.burst) == (float(rate_per_minute), burst):
            return self
        return ClientRateLimiter(rate_per_minute, burst)

    def _new_bucket(self, client: str, now: float) -> TokenBucket:
        buckets = self._buckets
        for _ in range(_SWEEP):
            if not buckets:
                break
            oldest = next(iter(buckets.values()))
            if not oldest.full(now):
                break
            buckets.popitem(last=False)
        while len(buckets) >= self.max_clients:
            buckets.popitem(last=False)
        bucket = buckets[client] = TokenBucket(self._rate, self.burst)
        return bucket

    def __len__(self) -> int:
        """The number of clients with a bucket now."""
        return len(self._buckets)

    def statistics(self) -> dict[str, float]:
        return {
            "clients": len(self._buckets),
            "rate_per_minute": self.rate_per_minute,
            "burst": self.burst,
        }


class InFlightLimiter:
    """At most ``limit`` requests at once; ``limit <= 0`` means unlimited (still counted).

    Explicit `try_enter` / `leave` rather than a context manager, because the holder is a
    response that outlives the handler's frame while it streams. Each successful
    `try_enter` must be matched by exactly one `leave` (put it in a ``finally``).
    """

    __slots__ = ("_in_flight", "_peak", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._peak = 0

    def try_enter(self) -> bool:
        """Take a place: True if there was one (then `leave` later), False if full."""
        n = self._in_flight
        if 0 < self.limit <= n:
            return False
        self._in_flight = n = n + 1
        if n > self._peak:
            self._peak = n
        return True

    def leave(self) -> None:
        """Give back the place a successful `try_enter` took."""
        if self._in_flight <= 0:
            raise RuntimeError("InFlightLimiter.leave() without a matching try_enter()")
        self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def statistics(self) -> dict[str, int]:
        return {"in_flight": self._in_flight, "peak": self._peak, "limit": self.limit}

    def __repr__(self) -> str:
        return f"<InFlightLimiter {self._in_flight}/{self.limit or 'unlimited'}>"


class PeerLimiter:
    """What one trusted peer may ask of this node: its own rate (``rate_per_minute <= 0``
    means unlimited) and at most ``max_in_flight`` requests at once (0: unlimited).

    Each successful `enter` must be matched by exactly one `leave` (put it in a
    ``finally``).
    """

    __slots__ = ("_in_flight", "max_in_flight", "rate")

    def __init__(self, rate_per_minute: float, burst: int, max_in_flight: int) -> None:
        self.rate = ClientRateLimiter(rate_per_minute, burst)
        self.max_in_flight = max_in_flight
        self._in_flight: dict[str, int] = {}

    def reconfigure(self, rate_per_minute: float, burst: int, max_in_flight: int) -> None:
        """New limits; requests in flight keep counting, and the rate buckets restart full
        only when the rate changes."""
        self.rate = self.rate.with_rate(rate_per_minute, burst)
        self.max_in_flight = max_in_flight

    def enter(self, peer: str, now: float) -> None:
        """Admit one request from ``peer`` or refuse it (LimitExceeded)."""
        self.rate.admit(peer, now)
        count = self._in_flight.get(peer, 0)
        if self.max_in_flight and count >= self.max_in_flight:
            raise LimitExceeded(
                "client",
                1,
                f"{peer} has {count} requests in flight, the most this node takes from one peer",
            )
        self._in_flight[peer] = count + 1

    def leave(self, peer: str) -> None:
        """Give back the place a successful `enter` took."""
        count = self._in_flight.get(peer, 1) - 1
        if count:
            self._in_flight[peer] = count
        else:
            self._in_flight.pop(peer, None)
