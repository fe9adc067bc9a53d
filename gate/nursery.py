"""The supervisor: starts Gate's services in dependency order, restarts, drains, stops.

Theory of operation
-------------------
A `Service` is an async function that binds what it needs, calls
``task_status.started(info)`` once it is ready (listening), then serves until its
`ServiceContext.shutdown` event is set, finishes its in-flight work and returns.

`Supervisor` checks the graph when it is built. `Supervisor.run` owns one nursery and
starts the services one at a time, in a stable topological order of `Service.after`, each
with ``await nursery.start(...)``: a service is only started once every service it names
in ``after`` is ready (a slow bind delays the rest; that is the point). When all are,
``run`` reports ``started_info`` (service name -> the value it passed to ``started``).
Each service is driven by one supervising task that runs each *attempt* of the service in
a nursery of its own, so a service's exception reaches that task (as a group of one, taken
apart with ``except*``) and never the supervisor's nursery.

A non-critical service that crashes, or returns without being asked to, is logged and
restarted with a fresh context after a `Backoff` delay; the sleep ends early on shutdown.
That includes failing its first start, which therefore holds up the services after it:
``after`` is a guarantee. A critical service that crashes, returns unasked or fails to
start fails the node: the others are drained and ``run`` raises `ServiceError` from the
original exception.

Shutdown (`Supervisor.request_shutdown`, a signal via `run_until_signal`, or a critical
failure) stops any startup still in progress, then sets each service's ``shutdown`` event
once every service that depends on it has returned: dependents drain before their
dependencies, independent services drain concurrently. Everything left when
``drain_timeout`` runs out, or when `Supervisor.cancel` is called, is cancelled and named
in the log, in the same order (dependents first; a dependency not yet told to stop is told
and given a second), so what a cancelled service leaves for the ones below it, such as the
usage records of cut requests, is still taken care of. All tasks live in nurseries under
``run``, so none outlives it; no threads.

Errors: ``run`` either returns (a clean stop) or raises one plain `ServiceError`, never an
ExceptionGroup, because callers handle one error tree (`GateError` and its subclasses) and
a node fails for one first reason. Later failures are logged. Only exceptions that are not
``Exception`` (KeyboardInterrupt, a bug in this module) can still arrive grouped.
Cancelling ``run`` from outside is a hard stop with no drain; use `request_shutdown` for
a graceful one.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import trio

from gate.errors import ServiceError, collapse_group, describe

__all__ = [
    "Backoff",
    "Service",
    "ServiceContext",
    "ServiceFn",
    "ServiceState",
    "ServiceStatistics",
    "Supervisor",
    "run_until_signal",
]

ServiceState = Literal["pending", "starting", "running", "backoff", "stopped", "failed"]


@dataclass(eq=False)
class ServiceContext:
    """Handed to each run of a service; a restart gets a fresh one."""

    name: str
    shutdown: trio.Event = field(default_factory=trio.Event)
    """Set when the node is stopping: stop accepting, finish in-flight work, then return."""

    async def wait_shutdown(self) -> None:
        await self.shutdown.wait()

    @property
    def stopping(self) -> bool:
        return self.shutdown.is_set()


class ServiceFn(Protocol):
    """``async def run(ctx, *, task_status=trio.TASK_STATUS_IGNORED) -> None``."""

    def __call__(
        self, ctx: ServiceContext, /, *, task_status: trio.TaskStatus[object] = ...
    ) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Service:
    name: str
    run: ServiceFn
    critical: bool = True
    """Crashing, or failing to start, stops the whole node with an error."""
    after: tuple[str, ...] = ()
    """Names of the services that must be started (listening) before this one."""


class Backoff:
    """Restart delays: initial * factor**n, capped at maximum, plus 0..jitter of itself.

    Pure policy: time is an argument and randomness comes from ``rng``, so a seeded
    `random.Random` makes it deterministic. Delays never exceed ``maximum * (1 + jitter)``.
    """

    def __init__(
        self,
        *,
        initial: float = 0.5,
        factor: float = 2.0,
        maximum: float = 30.0,
        jitter: float = 0.1,
        stable_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if not (0 < initial <= maximum and factor >= 1 and jitter >= 0 and stable_after >= 0):
            raise ValueError("need 0 < initial <= maximum, factor >= 1, jitter >= 0")
        self.initial, self.factor, self.maximum = initial, factor, maximum
        self.jitter, self.stable_after = jitter, stable_after
        self._rng = rng if rng is not None else random.Random()
        self._base = initial

    def reset(self) -> None:
        self._base = self.initial

    def next_delay(self, ran_for: float) -> float:
        """The delay before the next restart of a service that crashed after ``ran_for``s."""
        if ran_for >= self.stable_after:
            self.reset()
        base = self._base
        self._base = min(base * self.factor, self.maximum)  # capped: never overflows
        return base * (1 + self._rng.uniform(0, self.jitter))


@dataclass(frozen=True)
class ServiceStatistics:
    state: ServiceState
    restarts: int
    last_error: str | None  # describe() of the last exception, if any


@dataclass(eq=False)
class _Slot:
    """The supervisor's mutable record of one service."""

    service: Service
    backoff: Backoff
    dependents: list[_Slot] = field(default_factory=list)
    ctx: ServiceContext | None = None
    info: object = None
    started: bool = False  # has called task_status.started at least once
    launched: bool = False  # its supervising task was spawned
    done: trio.Event = field(default_factory=trio.Event)  # will never run again
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # its hard stop
    state: ServiceState = "pending"
    restarts: int = 0
    last_error: str | None = None


def _start_order(services: Sequence[Service]) -> list[Service]:
    """Stable topological sort: the earliest given service whose ``after`` are all placed."""
    by_name: dict[str, Service] = {}
    for s in services:
        if s.name in by_name:
            raise ServiceError(f"two services are named {s.name!r}")
        by_name[s.name] = s
    for s in services:
        for dep in s.after:
            if dep not in by_name:
                raise ServiceError(f"service {s.name!r} starts after unknown service {dep!r}")
    order: list[Service] = []
    placed: set[str] = set()
    while len(order) < len(services):
        ready = [s for s in services if s.name not in placed and placed.issuperset(s.after)]
        if not ready:  # every service left waits on another one left: walk to a cycle
            path = [next(s.name for s in services if s.name not in placed)]
            while path.count(path[-1]) < 2:
                path.append(next(d for d in by_name[path[-1]].after if d not in placed))
            cycle = path[path.index(path[-1]) :]
            raise ServiceError(f"services depend on each other: {' -> '.join(cycle)}")
        order.append(ready[0])
        placed.add(ready[0].name)
    return order


# After the drain: how long a service told to stop may take before it is cancelled, and
# the bound of that whole ordered stop (`Supervisor._stop_in_order`).
_LAST_GRACE = 1.0
_STOP_BOUND = 3.0


class Supervisor:
    """Runs a set of services; see the module docstring. One `run` per instance.

    The constructor checks the graph: duplicate names, unknown ``after`` names and cycles
    raise `ServiceError` here, before anything can start.
    """

    def __init__(
        self,
        services: Sequence[Service],
        *,
        drain_timeout: float = 10.0,
        backoff: Callable[[], Backoff] = Backoff,
        logger: logging.Logger | None = None,
    ) -> None:
        self._slots = {s.name: _Slot(s, backoff()) for s in _start_order(services)}
        for slot in self._slots.values():
            for dep in slot.service.after:
                self._slots[dep].dependents.append(slot)
        self._drain_timeout = drain_timeout
        self._log = logger if logger is not None else logging.getLogger("gate.supervisor")
        self._stop_requested = trio.Event()
        self._startup_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._failure: tuple[str, BaseException] | None = None
        self._ran = False
        self._drain_scope: trio.CancelScope | None = None
        self._skip_drain = False

    @property
    def shutdown_requested(self) -> bool:
        return self._stop_requested.is_set()

    @property
    def started_info(self) -> dict[str, object]:
        """Name -> the value each started service passed to ``started`` (latest run)."""
        return {name: s.info for name, s in self._slots.items() if s.started}

    def statistics(self) -> dict[str, ServiceStatistics]:
        """Per service, in start order."""
        return {
            name: ServiceStatistics(s.state, s.restarts, s.last_error)
            for name, s in self._slots.items()
        }

    def request_shutdown(self, reason: str = "requested") -> None:
        """Begin a graceful stop (see the module docstring). Idempotent; call from trio."""
        if self._stop_requested.is_set():
            return
        # Said on the console as well (`console`): a person who pressed Ctrl-C sees at once
        # that Gate heard it and how long it may take.
        self._log.info(
            "shutting down: %s; what is in flight has up to %gs to finish (a second signal"
            " stops at once)",
            reason,
            self._drain_timeout,
            extra={"console": True},
        )
        self._stop_requested.set()
        self._startup_scope.cancel()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop now: like `request_shutdown`, but cancel every service without a drain."""
        self.request_shutdown(reason)
        if self._nursery is not None and not self._skip_drain:
            self._log.warning("skipping the drain (%s); cancelling %s", reason, self._running())
            self._skip_drain = True
            if self._drain_scope is not None:
                self._drain_scope.cancel()

    async def run(
        self, *, task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every service, report ``started_info``, run until stopped.

        Returns after a clean stop, including one requested before every service started
        (then ``task_status.started`` is never called). Raises `ServiceError`, chained
        from the cause, if a critical service failed.
        """
        if self._ran:
            raise RuntimeError("Supervisor.run() can only be called once")
        self._ran = True
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            with self._startup_scope:
                for slot in self._slots.values():
                    if self.shutdown_requested:
                        break
                    slot.launched = True
                    try:
                        await nursery.start(
                            self._supervise, slot, name=f"service {slot.service.name}"
                        )
                    except Exception as exc:  # a critical service failed to start
                        self._fail(slot, exc, "failed to start")
                        break
                else:
                    task_status.started(self.started_info)
            await self._stop_requested.wait()
            await self._drain()
            await self._stop_in_order()
            nursery.cancel_scope.cancel()
        if self._failure is not None:
            message, cause = self._failure
            raise ServiceError(message) from cause

    async def _drain(self) -> None:
        slots = list(self._slots.values())
        for slot in slots:
            if not slot.launched:
                slot.done.set()
        with trio.move_on_after(self._drain_timeout) as deadline:
            self._drain_scope = deadline
            if self._skip_drain:
                deadline.cancel()
            async with trio.open_nursery() as tellers:
                for slot in reversed(slots):
                    tellers.start_soon(self._tell_after_dependents, slot)
            for slot in slots:
                await slot.done.wait()
        if deadline.cancelled_caught and not self._skip_drain:
            self._log.warning(
                "drain deadline of %gs passed; cancelling %s", self._drain_timeout, self._running()
            )

    async def _stop_in_order(self) -> None:
        """What the drain left running is cancelled dependents first, as it would have
        stopped: a service is cancelled only once those that use it are gone, and one that
        was not yet told to stop (its dependents were still running) is told first and
        given `_LAST_GRACE` to stop by itself. So what the cancelled ones leave behind
        still reaches the services below them (the usage of cut requests reaches the
        usage writer, which writes it before it stops). Bounded by `_STOP_BOUND` in all."""
        with trio.move_on_after(_STOP_BOUND):
            for slot in reversed(self._slots.values()):
                for dependent in slot.dependents:
                    await dependent.done.wait()
                if slot.ctx is not None and not slot.ctx.shutdown.is_set():
                    slot.ctx.shutdown.set()
                    with trio.move_on_after(_LAST_GRACE):
                        await slot.done.wait()
                slot.scope.cancel()

    @staticmethod
    async def _tell_after_dependents(slot: _Slot) -> None:
        for dependent in slot.dependents:
            await dependent.done.wait()
        if slot.ctx is not None:
            slot.ctx.shutdown.set()

    def _running(self) -> str:
        return ", ".join(s.service.name for s in self._slots.values() if not s.done.is_set())

    def _fail(self, slot: _Slot, error: BaseException, what: str) -> None:
        message = f"critical service {slot.service.name!r} {what}: {describe(error)}"
        slot.state = "failed"
        self._log.error("%s", message, exc_info=error)
        if self._failure is None:
            self._failure = (message, error)
        self.request_shutdown(message)

    async def _supervise(self, slot: _Slot, *, task_status: trio.TaskStatus[object]) -> None:
        """One task per service: runs attempts until shutdown or a critical failure."""
        try:
            with slot.scope:
                await self._attempts(slot, task_status)
        finally:
            slot.done.set()
            if slot.state != "failed":
                slot.state = "stopped"

    async def _attempts(self, slot: _Slot, task_status: trio.TaskStatus[object]) -> None:
        """Attempts until shutdown or a critical failure (`_supervise` holds its scope)."""
        name = slot.service.name
        while True:
            error, ran_for = await self._attempt(slot, task_status)
            if error is None and self.shutdown_requested:
                return
            if error is None:
                error = ServiceError(f"service {name!r} returned before shutdown")
            slot.last_error = describe(error)
            if slot.service.critical and not slot.started:
                slot.state = "failed"
                raise error  # out of nursery.start in run(), which fails the node
            if slot.service.critical:
                self._fail(slot, error, "crashed")
                return
            if self.shutdown_requested:
                slot.state = "failed"
                self._log.warning("service %r failed while stopping: %s", name, describe(error))
                return
            delay = slot.backoff.next_delay(ran_for)
            slot.restarts += 1
            slot.state = "backoff"
            self._log.warning(
                "service %r crashed after running %.1fs: %s; restart #%d in %.2fs",
                name,
                ran_for,
                describe(error),
                slot.restarts,
                delay,
                exc_info=error,
            )
            with trio.move_on_after(delay):
                await self._stop_requested.wait()
            if self.shutdown_requested:
                # Not started yet? Then run()'s startup scope, which request_shutdown
                # cancelled, must end nursery.start: returning would make it raise.
                await trio.lowlevel.checkpoint()
                return

    async def _attempt(
        self, slot: _Slot, task_status: trio.TaskStatus[object]
    ) -> tuple[Exception | None, float]:
        """Run the service once; return what it raised (None if it returned) and for how long
        it ran after ``started``. The first successful start is reported to ``task_status``.
        """
        ctx = slot.ctx = ServiceContext(slot.service.name)
        slot.state = "starting"
        began: float | None = None
        error: Exception | None = None
        try:
            async with trio.open_nursery() as attempt:
                slot.info = await attempt.start(slot.service.run, ctx)
                began = trio.current_time()
                slot.state = "running"
                self._log.info("service %r started: %r", slot.service.name, slot.info)
                if not slot.started:
                    slot.started = True
                    task_status.started(slot.info)
        except* Exception as group:
            # Every nursery on the way wraps the one failure in a group of one; keep the
            # original so that handlers and messages see the real error.
            collapsed = collapse_group(group)
            error = collapsed if isinstance(collapsed, Exception) else group
        ran_for = 0.0 if began is None else trio.current_time() - began
        return error, ran_for


async def run_until_signal(
    supervisor: Supervisor,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
    *,
    task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``supervisor``; the first signal asks for a graceful stop, a second one cancels.

    Returns (or raises `ServiceError`) as `Supervisor.run` does. Must be called from the
    main thread, where Python delivers signals (`trio.open_signal_receiver` checks).
    """
    failure: ServiceError | None = None
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_relay_signals, supervisor, received)
            try:
                await supervisor.run(task_status=task_status)
            except ServiceError as exc:  # re-raised below, so it is not wrapped in a group
                failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _relay_signals(supervisor: Supervisor, received: AsyncIterator[int]) -> None:
    count = 0
    async for signum in received:
        count += 1
        reason = f"signal {signal.Signals(signum).name}"
        if count == 1:
            supervisor.request_shutdown(reason)
        else:
            supervisor.cancel(f"second {reason}")
