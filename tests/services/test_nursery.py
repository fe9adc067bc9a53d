"""The supervisor (gate.nursery): start order, restarts, drain, failure, signals, leaks.

Every test runs on trio's MockClock with autojump, so "3 seconds" of draining costs
nothing and time deltas are exact; every test is bounded by `trio.fail_after` in virtual
time, so a hang fails fast instead of stalling the suite.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from gate.errors import ServiceError
from gate.nursery import (
    Backoff,
    Service,
    ServiceContext,
    ServiceFn,
    Supervisor,
    run_until_signal,
)

Log = list[tuple[Any, ...]]
LIMIT = 600  # virtual seconds; with autojump only a hang ever reaches it


def listener(
    name: str,
    log: Log,
    *,
    bind: float = 0.0,
    drain: float = 0.0,
    info: object = None,
) -> ServiceFn:
    """A well-behaved service: binds for `bind`s, serves, drains for `drain`s when told."""

    async def run(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        log.append(("enter", name, trio.current_time()))
        await trio.sleep(bind)
        log.append(("started", name, trio.current_time()))
        task_status.started(f"{name}-addr" if info is None else info)
        await ctx.wait_shutdown()
        log.append(("told", name, trio.current_time()))
        await trio.sleep(drain)
        log.append(("returned", name, trio.current_time()))

    return run


def events(log: Log, kind: str) -> list[str]:
    return [e[1] for e in log if e[0] == kind]


async def start(nursery: trio.Nursery, sup: Supervisor) -> dict[str, object]:
    info: dict[str, object] = await nursery.start(sup.run)
    return info


# --- start order --------------------------------------------------------------------------


async def test_start_order_follows_after_and_each_waits_for_the_previous_bind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    sup = Supervisor(
        [  # given order differs from dependency order
            Service("api", listener("api", log, bind=1), after=("store", "router")),
            Service("router", listener("router", log, bind=2), after=("store",)),
            Service("store", listener("store", log, bind=5)),
            Service("metrics", listener("metrics", log)),
        ]
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await start(nursery, sup)
            sup.request_shutdown()

    order = ["store", "router", "api", "metrics"]
    assert events(log, "enter") == order
    # Strictly one at a time: each service is entered only after the previous one started.
    starts = [e for e in log if e[0] in ("enter", "started")]
    assert [(e[0], e[1]) for e in starts] == [(k, n) for n in order for k in ("enter", "started")]
    enter_at = {e[1]: e[2] for e in log if e[0] == "enter"}
    assert enter_at == {"store": 0, "router": 5, "api": 7, "metrics": 8}


async def test_independent_services_keep_the_given_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    names = ["zeta", "alpha", "mid", "beta"]
    services = [Service(n, listener(n, log)) for n in names]
    services.insert(1, Service("dep", listener("dep", log), after=("beta",)))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await start(nursery, Supervisor(services))
            nursery.cancel_scope.cancel()
    assert events(log, "enter") == ["zeta", "alpha", "mid", "beta", "dep"]


async def test_started_info_holds_each_started_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    sup = Supervisor(
        [
            Service("store", listener("store", log, info=("127.0.0.1", 4242))),
            Service("api", listener("api", log, info={"port": 8080}), after=("store",)),
            Service("quiet", listener("quiet", log, info=None)),
        ]
    )
    assert sup.started_info == {}
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            info = await start(nursery, sup)
            expected = {"store": ("127.0.0.1", 4242), "api": {"port": 8080}, "quiet": "quiet-addr"}
            assert info == expected
            assert sup.started_info == expected
            assert {n: s.state for n, s in sup.statistics().items()} == dict.fromkeys(
                expected, "running"
            )
            sup.request_shutdown()
    assert {n: s.state for n, s in sup.statistics().items()} == dict.fromkeys(expected, "stopped")


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ({"a": (), "b": ("nope",)}, "'b' starts after unknown service 'nope'"),
        ({"a": ("b",), "b": ("c",), "c": ("a",), "d": ()}, "a -> b -> c -> a"),
        ({"x": (), "a": ("a",)}, "a -> a"),
        ({"x": ("b",), "b": ("a",), "a": ("b",)}, "b -> a -> b"),
    ],
)
def test_bad_graph_is_refused_before_anything_runs(
    graph: dict[str, tuple[str, ...]], message: str
) -> None:
    log: Log = []
    services = [Service(n, listener(n, log), after=deps) for n, deps in graph.items()]
    with pytest.raises(ServiceError, match=message):
        Supervisor(services)
    assert log == []


def test_duplicate_names_are_refused() -> None:
    log: Log = []
    with pytest.raises(ServiceError, match="two services are named 'a'"):
        Supervisor([Service("a", listener("a", log)), Service("a", listener("a", log))])


# --- failing to start ---------------------------------------------------------------------


def broken_bind(log: Log, name: str, exc: Exception, *, after: float = 1.0) -> ServiceFn:
    async def run(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        log.append(("enter", name, trio.current_time()))
        await trio.sleep(after)
        raise exc

    return run


async def test_critical_start_failure_stops_started_services_in_reverse_order(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: Log = []
    cause = OSError(98, "Address already in use")
    sup = Supervisor(
        [
            Service("store", listener("store", log, drain=1)),
            Service("router", listener("router", log, drain=1), after=("store",)),
            Service("api", broken_bind(log, "api", cause), after=("router",)),
            Service("late", listener("late", log), after=("api",)),
        ]
    )
    with trio.fail_after(LIMIT), pytest.raises(ServiceError) as excinfo:
        await sup.run()

    assert excinfo.value.__cause__ is cause
    assert "'api' failed to start" in str(excinfo.value)
    stops = [(e[0], e[1]) for e in log if e[0] in ("told", "returned")]
    assert stops == [
        ("told", "router"),
        ("returned", "router"),
        ("told", "store"),
        ("returned", "store"),
    ]
    assert "late" not in events(log, "enter")
    stats = sup.statistics()
    assert {n: s.state for n, s in stats.items()} == {
        "store": "stopped",
        "router": "stopped",
        "api": "failed",
        "late": "pending",
    }
    assert stats["api"].last_error == "OSError: [Errno 98] Address already in use"
    assert any(r.levelno == logging.ERROR and "'api'" in r.getMessage() for r in caplog.records)


# --- restarts -----------------------------------------------------------------------------


def flaky(log: Log, runs_for: list[float], *, crash_before_start: bool = False) -> ServiceFn:
    """Crashes on run n after `runs_for[n]` seconds; once the list is used up, stays up."""

    async def run(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        n = events(log, "enter").count("flaky")
        log.append(("enter", "flaky", trio.current_time(), ctx))
        if n < len(runs_for) and crash_before_start:
            await trio.sleep(runs_for[n])
            log.append(("crash", "flaky", trio.current_time()))
            raise ConnectionRefusedError(f"boom {n}")
        task_status.started(f"flaky-{n}")
        if n < len(runs_for):
            await trio.sleep(runs_for[n])
            log.append(("crash", "flaky", trio.current_time()))
            raise ValueError(f"boom {n}")
        await ctx.wait_shutdown()

    return run


def restart_delays(log: Log) -> list[float]:
    crashes = [e[2] for e in log if e[0] == "crash"]
    enters = [e[2] for e in log if e[0] == "enter" and e[1] == "flaky"]
    return [enter - crash for crash, enter in zip(crashes, enters[1:], strict=False)]


async def test_noncritical_crash_is_restarted_with_backoff_and_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: Log = []
    sup = Supervisor(
        [
            Service("store", listener("store", log)),
            Service("flaky", flaky(log, [0, 0, 0]), critical=False, after=("store",)),
        ],
        backoff=lambda: Backoff(rng=random.Random(1)),
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            info = await start(nursery, sup)
            assert info["flaky"] == "flaky-0"
            await trio.sleep(10)  # the three restarts take 3.5s plus jitter
            stats = sup.statistics()["flaky"]
            assert (stats.state, stats.restarts) == ("running", 3)
            assert stats.last_error == "ValueError: boom 2"
            assert sup.started_info["flaky"] == "flaky-3"  # the latest run's value
            assert sup.statistics()["store"].restarts == 0
            sup.request_shutdown()

    delays = restart_delays(log)
    for delay, base in zip(delays, [0.5, 1.0, 2.0], strict=True):
        assert base <= delay <= base * 1.1
    # Each run got a fresh context; the old ones were never told to stop (they crashed).
    contexts = [e[3] for e in log if e[0] == "enter" and e[1] == "flaky"]
    assert len({id(c) for c in contexts}) == 4
    assert [c.stopping for c in contexts] == [False, False, False, True]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    for n, message in enumerate(warnings):
        assert "'flaky' crashed" in message
        assert f": ValueError: boom {n};" in message
        assert f"restart #{n + 1} in {delays[n]:.2f}s" in message


async def test_backoff_resets_after_a_stable_run(autojump_clock: trio.testing.MockClock) -> None:
    log: Log = []
    sup = Supervisor(
        [Service("flaky", flaky(log, [0, 0, 61, 0, 59, 0]), critical=False)],
        backoff=lambda: Backoff(jitter=0),
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await start(nursery, sup)
            await trio.sleep(200)
            assert sup.statistics()["flaky"].restarts == 6
            sup.request_shutdown()
    # 61s >= stable_after resets to 0.5; 59s does not.
    assert restart_delays(log) == [0.5, 1.0, 0.5, 1.0, 2.0, 4.0]


async def test_failed_restart_before_started_counts_as_a_crash(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: Log = []
    # The first start fails too: startup waits for the service (`after` is a guarantee).
    sup = Supervisor(
        [
            Service("flaky", flaky(log, [1, 1], crash_before_start=True), critical=False),
            Service("api", listener("api", log), after=("flaky",)),
        ],
        backoff=lambda: Backoff(jitter=0),
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            info = await start(nursery, sup)
            assert trio.current_time() == 1 + 0.5 + 1 + 1.0
            assert info == {"flaky": "flaky-2", "api": "api-addr"}
            assert sup.statistics()["flaky"].restarts == 2
            sup.request_shutdown()
    assert events(log, "enter") == ["flaky", "flaky", "flaky", "api"]
    assert "ConnectionRefusedError: boom 1" in caplog.text


async def test_shutdown_interrupts_the_backoff_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    sup = Supervisor(
        [
            Service("store", listener("store", log)),
            Service("flaky", flaky(log, [1]), critical=False),
        ],
        backoff=lambda: Backoff(initial=20, jitter=0),
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await start(nursery, sup)
            await trio.sleep(5)  # crashed at 1, restart due at 21
            assert sup.statistics()["flaky"].state == "backoff"
            sup.request_shutdown()
        assert trio.current_time() == 5
    assert events(log, "enter").count("flaky") == 1
    assert sup.statistics()["flaky"].state == "stopped"


# --- drain --------------------------------------------------------------------------------


def server_with_request(log: Log, name: str, work: float) -> ServiceFn:
    """Has one request in flight that needs `work`s more after shutdown is set."""

    async def request(ctx: ServiceContext) -> None:
        await ctx.wait_shutdown()
        await trio.sleep(work)
        log.append(("completed", name, trio.current_time()))

    async def run(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as handlers:
            handlers.start_soon(request, ctx)
            task_status.started(name)
            await ctx.wait_shutdown()  # stop accepting; the nursery waits for the request
        log.append(("returned", name, trio.current_time()))

    return run


@pytest.mark.parametrize(("drain_timeout", "completes"), [(10.0, True), (1.0, False)])
async def test_shutdown_drains_in_flight_work_until_the_deadline(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    drain_timeout: float,
    completes: bool,
) -> None:
    log: Log = []
    sup = Supervisor(
        [Service("api", server_with_request(log, "api", 3))], drain_timeout=drain_timeout
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await start(nursery, sup)
            t0 = trio.current_time()
            sup.request_shutdown("test")
        elapsed = trio.current_time() - t0

    if completes:
        assert elapsed == 3
        assert events(log, "completed") == ["api"]
        assert events(log, "returned") == ["api"]
        assert "drain deadline" not in caplog.text
    else:
        assert elapsed == 1
        assert events(log, "completed") == []
        assert "drain deadline of 1s passed; cancelling api" in caplog.text
    assert sup.statistics()["api"].state == "stopped"


async def test_dependents_drain_before_dependencies_and_independents_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    sup = Supervisor(
        [
            Service("store", listener("store", log, drain=1)),
            Service("api", listener("api", log, drain=3), after=("store",)),
            Service("p2p", listener("p2p", log, drain=3), after=("store",)),
            Service("metrics", listener("metrics", log, drain=3)),
        ]
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await start(nursery, sup)
            t0 = trio.current_time()
            sup.request_shutdown()
    told = {e[1]: e[2] - t0 for e in log if e[0] == "told"}
    returned = {e[1]: e[2] - t0 for e in log if e[0] == "returned"}
    assert told == {"api": 0, "p2p": 0, "metrics": 0, "store": 3}
    assert returned == {"api": 3, "p2p": 3, "metrics": 3, "store": 4}


# --- critical crash after start -----------------------------------------------------------


async def test_critical_crash_drains_the_others_and_raises(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: Log = []
    cause = RuntimeError("disk on fire")

    async def worker(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep(5)
        raise cause

    sup = Supervisor(
        [
            Service("store", listener("store", log, drain=1)),
            Service("api", server_with_request(log, "api", 2), after=("store",)),
            Service("worker", worker, after=("store",)),
        ]
    )
    with trio.fail_after(LIMIT), pytest.raises(ServiceError) as excinfo:
        await sup.run()

    assert type(excinfo.value) is ServiceError  # plain, not an ExceptionGroup
    assert excinfo.value.__cause__ is cause
    assert "'worker' crashed" in str(excinfo.value)
    assert trio.current_time() == 5 + 2 + 1  # api drained its request, then store
    assert events(log, "completed") == ["api"]
    assert events(log, "returned") == ["api", "store"]
    assert sup.statistics()["worker"].state == "failed"
    assert sup.statistics()["worker"].last_error == "RuntimeError: disk on fire"
    assert "disk on fire" in caplog.text


async def test_critical_service_returning_unasked_fails_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def quitter(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep(1)

    with trio.fail_after(LIMIT), pytest.raises(ServiceError, match="'quitter' crashed") as excinfo:
        await Supervisor([Service("quitter", quitter)]).run()
    assert isinstance(excinfo.value.__cause__, ServiceError)
    assert "returned before shutdown" in str(excinfo.value.__cause__)


def fails_while_draining(cause: Exception) -> ServiceFn:
    async def run(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await ctx.wait_shutdown()
        await trio.sleep(1)
        raise cause

    return run


def stopper(holder: list[Supervisor], delay: float) -> ServiceFn:
    """Asks the node to shut down `delay`s after it started, like an operator would."""

    async def run(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep(delay)
        holder[0].request_shutdown("test is over")
        await ctx.wait_shutdown()

    return run


@pytest.mark.parametrize("critical", [True, False])
async def test_failure_while_draining(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, critical: bool
) -> None:
    log: Log = []
    cause = OSError("flush failed")
    holder: list[Supervisor] = []
    sup = Supervisor(
        [
            Service("store", listener("store", log)),
            Service("db", fails_while_draining(cause), critical=critical, after=("store",)),
            Service("stopper", stopper(holder, 5)),
        ]
    )
    holder.append(sup)
    with trio.fail_after(LIMIT):
        if critical:  # the node did not stop cleanly, and run() says so
            with pytest.raises(ServiceError, match="'db'") as excinfo:
                await sup.run()
            assert excinfo.value.__cause__ is cause
        else:
            await sup.run()
    stats = sup.statistics()["db"]
    assert (stats.state, stats.restarts, stats.last_error) == ("failed", 0, "OSError: flush failed")
    assert events(log, "returned") == ["store"]  # still drained, after db
    assert trio.current_time() == 5 + 1
    assert "flush failed" in caplog.text


# --- nothing left behind ------------------------------------------------------------------


class TaskRecorder(trio.abc.Instrument):
    def __init__(self) -> None:
        self.spawned: set[trio.lowlevel.Task] = set()
        self.exited: set[trio.lowlevel.Task] = set()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.exited.add(task)


async def test_no_task_or_thread_outlives_run(autojump_clock: trio.testing.MockClock) -> None:
    log: Log = []
    holder: list[Supervisor] = []

    async def stubborn(
        ctx: ServiceContext, *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as handlers:
            for _ in range(3):
                handlers.start_soon(trio.sleep_forever)  # requests that never finish
            task_status.started()
            await trio.sleep_forever()

    sup = Supervisor(
        [
            Service("api", server_with_request(log, "api", 1)),
            Service("flaky", flaky(log, [0, 0, 0]), critical=False),
            Service("stubborn", stubborn, critical=False),
            Service("stopper", stopper(holder, 30)),
        ],
        drain_timeout=5,
    )
    holder.append(sup)
    threads_before = threading.active_count()
    recorder = TaskRecorder()
    trio.lowlevel.add_instrument(recorder)
    try:
        with trio.fail_after(LIMIT):
            await run_until_signal(sup)  # the whole stack a daemon runs
    finally:
        trio.lowlevel.remove_instrument(recorder)

    assert trio.current_time() == 30 + 5  # stubborn was cancelled at the drain deadline
    assert events(log, "completed") == ["api"]
    assert len(recorder.spawned) >= 4 + 4 + 3  # services, restarts, request handlers
    assert recorder.spawned - recorder.exited == set()
    assert threading.active_count() == threads_before
    assert {s.state for s in sup.statistics().values()} == {"stopped"}


# --- signals ------------------------------------------------------------------------------


async def test_sigterm_shuts_down_gracefully(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gate.supervisor")
    log: Log = []
    sup = Supervisor([Service("api", server_with_request(log, "api", 3))])
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            info = await nursery.start(run_until_signal, sup)
            assert info == {"api": "api"}
            t0 = trio.current_time()
            signal.raise_signal(signal.SIGTERM)
    assert trio.current_time() - t0 == 3
    assert events(log, "completed") == ["api"]
    assert "shutting down: signal SIGTERM" in caplog.text


async def test_second_signal_skips_the_drain(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    log: Log = []
    sup = Supervisor([Service("api", server_with_request(log, "api", 100))], drain_timeout=60)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_until_signal, sup)
            t0 = trio.current_time()
            signal.raise_signal(signal.SIGINT)
            await trio.sleep(5)  # draining
            assert sup.shutdown_requested
            assert events(log, "completed") == []
            signal.raise_signal(signal.SIGINT)
    assert trio.current_time() - t0 == 5
    assert events(log, "completed") == []
    assert "skipping the drain (second signal SIGINT); cancelling api" in caplog.text


async def test_run_until_signal_raises_a_plain_service_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cause = OSError("no")
    log: Log = []
    sup = Supervisor([Service("api", broken_bind(log, "api", cause))])
    with trio.fail_after(LIMIT), pytest.raises(ServiceError) as excinfo:
        await run_until_signal(sup)
    assert excinfo.value.__cause__ is cause


# --- request_shutdown ---------------------------------------------------------------------


async def test_request_shutdown_during_startup_is_idempotent(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gate.supervisor")
    log: Log = []
    sup = Supervisor(
        [
            Service("store", listener("store", log, drain=1)),
            Service("slow", listener("slow", log, bind=100), after=("store",)),
            Service("api", listener("api", log), after=("slow",)),
        ]
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(10)  # store is up, slow is binding
            sup.request_shutdown("first")
            sup.request_shutdown("second")
    assert trio.current_time() == 11  # startup abandoned at once; store drained for 1s
    assert events(log, "enter") == ["store", "slow"]
    assert events(log, "started") == ["store"]
    assert events(log, "returned") == ["store"]
    assert caplog.text.count("shutting down") == 1
    assert "shutting down: first" in caplog.text
    assert {n: s.state for n, s in sup.statistics().items()} == {
        "store": "stopped",
        "slow": "stopped",
        "api": "pending",
    }
    assert sup.started_info == {"store": "store-addr"}


async def test_request_shutdown_during_first_start_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    sup = Supervisor(
        [Service("flaky", flaky(log, [0] * 100, crash_before_start=True), critical=False)],
        backoff=lambda: Backoff(jitter=0),
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(2)  # crashed at 0, 0.5 and 1.5; now waiting 2s
            sup.request_shutdown()
    assert trio.current_time() == 2
    assert len(events(log, "enter")) == 3
    assert sup.statistics()["flaky"].state == "stopped"


async def test_request_shutdown_before_run_starts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    sup = Supervisor([Service("a", listener("a", log))])
    sup.request_shutdown()
    sup.request_shutdown()
    with trio.fail_after(LIMIT):
        await sup.run()
    assert log == []
    with pytest.raises(RuntimeError, match="only be called once"):
        await sup.run()


# --- Backoff, the pure policy -------------------------------------------------------------


def test_backoff_doubles_to_the_cap_with_bounded_jitter() -> None:
    b = Backoff(rng=random.Random(3))
    bases = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    delays = [b.next_delay(0) for _ in bases]
    for delay, base in zip(delays, bases, strict=True):
        assert base <= delay <= base * 1.1
    assert len(set(delays)) == len(delays)  # jitter is applied
    same = Backoff(rng=random.Random(3))
    assert [same.next_delay(0) for _ in bases] == delays  # deterministic given the rng


def test_backoff_resets() -> None:
    b = Backoff(jitter=0)
    assert [b.next_delay(59.9) for _ in range(3)] == [0.5, 1, 2]
    assert b.next_delay(60) == 0.5
    b.next_delay(0)
    b.reset()
    assert b.next_delay(0) == 0.5


@given(
    seed=st.integers(),
    ran=st.lists(st.floats(min_value=0, max_value=200), max_size=2000),
)
def test_backoff_model(seed: int, ran: list[float]) -> None:
    b = Backoff(rng=random.Random(seed))
    base = 0.5
    for r in ran:
        if r >= 60:
            base = 0.5
        delay = b.next_delay(r)
        assert base <= delay <= base * 1.1 <= 33
        base = min(base * 2, 30)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": 40}, {"factor": 0.5}, {"jitter": -1}, {"stable_after": -1}],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
