"""Rate and concurrency limits: pure policies, time passed in, so no clock and no trio."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.errors import GateError
from gate.protocol.errors import ErrorCode
from gate.services.gateway.limits import (
    ClientRateLimiter,
    InFlightLimiter,
    LimitExceeded,
    PeerLimiter,
    TokenBucket,
)

T0 = 100_000.0  # a trio.current_time()-like origin


# --- TokenBucket ---


def test_bucket_starts_full_then_refuses_with_the_exact_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.try_acquire(T0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(T0) == pytest.approx(0.5)  # one token per 0.5 s
    assert bucket.try_acquire(T0 + 0.25) == pytest.approx(0.25)
    assert bucket.try_acquire(T0 + 0.5) == 0.0
    assert bucket.try_acquire(T0 + 0.5) == pytest.approx(0.5)


def test_refusal_consumes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.try_acquire(T0) == 0.0
    for _ in range(100):
        assert bucket.try_acquire(T0 + 0.5) == pytest.approx(0.5)
    assert bucket.try_acquire(T0 + 1.0) == 0.0


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2)
    assert bucket.available(T0) == 2
    bucket.try_acquire(T0)
    assert bucket.available(T0) == pytest.approx(1)
    assert bucket.available(T0 + 0.05) == pytest.approx(1.5)
    assert bucket.available(T0 + 3600) == 2
    assert bucket.full(T0 + 3600)
    later = T0 + 3600
    assert [bucket.try_acquire(later) for _ in range(3)][:2] == [0.0, 0.0]
    assert not bucket.full(later)


@pytest.mark.parametrize("origin", [0.0, T0, 1.7e9])
@pytest.mark.parametrize(("rate", "burst"), [(17.0, 1), (0.1, 1), (1000.0, 3)])
def test_a_full_bucket_admits_burst_at_any_clock_value(
    origin: float, rate: float, burst: int
) -> None:
    bucket = TokenBucket(rate, burst)
    assert [bucket.try_acquire(origin) for _ in range(burst)] == [0.0] * burst
    assert bucket.try_acquire(origin) > 0


def test_cost_is_charged_and_a_cost_above_burst_never_passes() -> None:
    bucket = TokenBucket(rate=1.0, burst=10)
    assert bucket.try_acquire(T0, cost=7) == 0.0
    assert bucket.try_acquire(T0, cost=5) == pytest.approx(2.0)
    assert bucket.try_acquire(T0 + 2.0, cost=5) == 0.0
    assert bucket.try_acquire(T0 + 1e6, cost=11) == math.inf


def test_time_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.try_acquire(T0) == 0.0
    assert bucket.try_acquire(T0 - 50) > 0
    assert bucket.try_acquire(T0 + 1.0) == 0.0


@pytest.mark.parametrize("rate", [0, 0.0, -1.0])
def test_rate_zero_or_less_is_unlimited(rate: float) -> None:
    bucket = TokenBucket(rate=rate, burst=0)
    assert bucket.unlimited
    assert all(bucket.try_acquire(T0, cost=1e9) == 0.0 for _ in range(1000))
    assert bucket.available(T0) == math.inf


@pytest.mark.parametrize(("rate", "burst"), [(1.0, 0), (1.0, -1), (math.inf, 1), (1.0, math.nan)])
def test_a_limit_that_could_never_admit_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)


# trio.current_time() values, and wall-clock ones (the worst case for float rounding).
origins = st.sampled_from([0.0, T0, 1.7e9])
rates = st.floats(min_value=0.01, max_value=1000.0)
bursts = st.floats(min_value=1.0, max_value=100.0)
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0),  # time since the previous call
        st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.0, 3.5]),  # cost
    ),
    max_size=200,
)


@settings(max_examples=300)
@given(origin=origins, rate=rates, burst=bursts, steps=steps)
def test_never_admits_more_than_burst_plus_rate_times_elapsed(
    origin: float, rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = origin
    slack = 1e-9 + 1e-15 * origin + 1e-12  # seconds; see limits._SLACK
    admitted: list[tuple[float, float]] = []
    for dt, cost in steps:
        now += dt
        if bucket.try_acquire(now, cost) == 0.0:
            admitted.append((now, cost))
    # Every window [t_i, t_j] between two admissions, both ends included.
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= burst + rate * (end - start + slack) + 1e-9 * total


@settings(max_examples=300)
@given(origin=origins, rate=rates, burst=bursts, steps=steps)
def test_retry_after_is_when_the_request_passes(
    origin: float, rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = origin
    for dt, cost in steps:
        now += dt
        wait = bucket.try_acquire(now, cost)
        if wait == 0.0:
            continue
        if cost > burst:
            assert wait == math.inf
            continue
        assert wait > 0
        early, late = copy.copy(bucket), copy.copy(bucket)
        if wait > 1e-4:
            assert early.try_acquire(now + wait - 1e-5, cost) > 0
        assert late.try_acquire(now + wait * (1 + 1e-9) + 1e-9, cost) == 0.0


# --- ClientRateLimiter ---


def test_clients_are_limited_independently() -> None:
    limiter = ClientRateLimiter(rate_per_minute=60, burst=2)
    assert [limiter.check("a", T0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("a", T0) == pytest.approx(1.0)  # 60/min is one per second
    assert limiter.check("b", T0) == 0.0
    assert limiter.check("a", T0 + 1.0) == 0.0
    assert len(limiter) == 2


def test_unlimited_limiter_keeps_no_state() -> None:
    limiter = ClientRateLimiter(rate_per_minute=0, burst=0)
    assert limiter.unlimited
    assert all(limiter.check(f"c{i}", T0) == 0.0 for i in range(100))
    assert len(limiter) == 0


def test_memory_is_capped_whatever_the_clients() -> None:
    limiter = ClientRateLimiter(rate_per_minute=1, burst=1, max_clients=50)
    for i in range(10_000):
        limiter.check(f"client-{i}", T0)  # every bucket stays non-full: worst case
        assert len(limiter) <= 50
    assert limiter.statistics()["clients"] == 50


def test_full_buckets_are_swept_so_idle_clients_cost_nothing() -> None:
    limiter = ClientRateLimiter(rate_per_minute=60, burst=5)
    for i in range(100):
        limiter.check(f"client-{i}", T0 + i * 10.0)  # each refills in 1 s, long before the next
    assert len(limiter) <= 2


def test_eviction_takes_the_least_recently_used_client() -> None:
    limiter = ClientRateLimiter(rate_per_minute=1, burst=1, max_clients=2)
    assert limiter.check("busy", T0) == 0.0
    assert limiter.check("other", T0) == 0.0
    assert limiter.check("busy", T0) > 0  # touches "busy": now "other" is the oldest
    assert limiter.check("new", T0) == 0.0  # evicts "other"
    assert limiter.check("busy", T0) > 0  # kept its empty bucket
    assert limiter.check("other", T0) == 0.0  # came back with a fresh one


def test_a_limited_client_limiter_needs_a_burst() -> None:
    with pytest.raises(ValueError):
        ClientRateLimiter(rate_per_minute=10, burst=0)
    with pytest.raises(ValueError):
        ClientRateLimiter(rate_per_minute=10, burst=1, max_clients=0)


# --- InFlightLimiter ---


def test_in_flight_limit() -> None:
    limiter = InFlightLimiter(2)
    assert limiter.try_enter() and limiter.try_enter()
    assert limiter.in_flight == 2
    assert not limiter.try_enter()
    assert limiter.in_flight == 2  # a refusal takes no place
    limiter.leave()
    assert limiter.try_enter()
    limiter.leave()
    limiter.leave()
    assert limiter.in_flight == 0
    assert limiter.statistics() == {"in_flight": 0, "peak": 2, "limit": 2}


def test_in_flight_zero_is_unlimited_but_counted() -> None:
    limiter = InFlightLimiter(0)
    assert all(limiter.try_enter() for _ in range(10_000))
    assert limiter.in_flight == 10_000


def test_leave_without_enter_is_a_bug() -> None:
    limiter = InFlightLimiter(1)
    with pytest.raises(RuntimeError):
        limiter.leave()
    assert limiter.try_enter()
    limiter.leave()
    with pytest.raises(RuntimeError):
        limiter.leave()


# --- LimitExceeded ---


def test_limit_exceeded_carries_scope_retry_after_and_code() -> None:
    exc = LimitExceeded("client", 1.2)
    assert isinstance(exc, GateError)
    assert exc.scope == "client"
    assert exc.retry_after == 1.2
    assert exc.code is ErrorCode.RATE_LIMITED
    assert "client" in str(exc)


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, b"1"), (0.01, b"1"), (1.0, b"1"), (1.2, b"2"), (59.5, b"60"), (math.inf, b"3600")],
)
def test_retry_after_header_is_whole_seconds_rounded_up(retry_after: float, header: bytes) -> None:
    assert LimitExceeded("global", retry_after).retry_after_header == header


def test_limit_exceeded_scope_is_checked() -> None:
    with pytest.raises(ValueError):
        LimitExceeded("planet", 1.0)  # type: ignore[arg-type]


def test_a_peer_gets_its_own_in_flight_cap_and_gives_places_back():
    limiter = PeerLimiter(rate_per_minute=0, burst=1, max_in_flight=2)
    limiter.enter("peer:a", 0.0)
    limiter.enter("peer:a", 0.0)
    with pytest.raises(LimitExceeded) as refused:
        limiter.enter("peer:a", 0.0)
    assert refused.value.retry_after == 1 and "2 requests in flight" in str(refused.value)
    limiter.enter("peer:b", 0.0)  # another peer has its own count
    limiter.leave("peer:a")
    limiter.enter("peer:a", 0.0)  # the place given back is taken again


def test_a_peer_rate_refuses_with_the_wait_and_survives_an_unchanged_reconfigure():
    limiter = PeerLimiter(rate_per_minute=60, burst=1, max_in_flight=0)
    limiter.enter("peer:a", 0.0)
    limiter.leave("peer:a")
    with pytest.raises(LimitExceeded) as refused:
        limiter.enter("peer:a", 0.0)
    assert refused.value.retry_after == pytest.approx(1.0)
    limiter.reconfigure(60, 1, 0)  # same rate: the debt stays
    with pytest.raises(LimitExceeded):
        limiter.enter("peer:a", 0.5)
    limiter.reconfigure(120, 1, 0)  # a new rate starts every bucket full
    limiter.enter("peer:a", 0.5)
