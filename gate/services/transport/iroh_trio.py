"""Run iroh's uniffi-generated asyncio bindings natively inside ``trio.run``.

Theory of operation
-------------------
Every ``async def`` in ``iroh.iroh_ffi`` is a thin wrapper around one generated coroutine,
``_uniffi_rust_call_async(rust_future, poll, complete, free, lift, error)``::

    try:
        eventloop = _uniffi_get_event_loop()          # _UNIFFI_GLOBAL_EVENT_LOOP if set
        while True:
            future = eventloop.create_future()
            poll(rust_future, _uniffi_continuation_callback, handle_of((eventloop, future)))
            poll_code = await future                  # READY (0) or WAKE (1)
            if poll_code == READY:
                break
        return lift(complete(rust_future))            # raises the lifted IrohError, if any
    finally:
        free(rust_future)                             # drops (cancels) the Rust future

and the continuation callback, which Rust calls on *any* thread::

    (eventloop, future) = handle_map.remove(handle)
    eventloop.call_soon_threadsafe(_uniffi_set_future_result, future, poll_code)
    # where _uniffi_set_future_result does: if not future.cancelled(): future.set_result(code)

So the whole asyncio dependency of the async calls is two methods of one module-level
object, ``create_future()`` and ``call_soon_threadsafe(fn, *args)``, plus the future's
``cancelled()``/``set_result()`` and ``await``. :func:`install` puts a
:class:`TrioEventLoopShim` in that slot (``uniffi_set_event_loop``):

* ``create_future()`` returns a :class:`TrioFuture` bound to the calling trio task's run
  (its :class:`trio.lowlevel.TrioToken` and thread).
* ``await future`` parks the task with :func:`trio.lowlevel.wait_task_rescheduled`;
  ``set_result`` reschedules it with the poll code.
* ``call_soon_threadsafe(fn, future, code)`` first records ``code`` on the future (a plain
  attribute store, atomic under the GIL), then runs ``fn`` *now* when called on the
  thread of the future's own trio run (uniffi reports READY synchronously from inside
  ``poll``: no wakeup-fd trip needed), else hands it to ``TrioToken.run_sync_soon``
  (a Rust thread reporting WAKE). A run that has ended is skipped silently: this runs
  inside a ctypes callback, where any exception would be unraisable.
* Cancellation: trio calls the future's abort function. If no poll code is in flight the
  abort succeeds, trio raises :class:`trio.Cancelled` *at the* ``await future`` inside
  the generated coroutine, and its ``finally: free(rust_future)`` drops the Rust future
  (uniffi then fires the stored continuation once more with READY; the map entry is
  removed and ``set_result`` is skipped because ``cancelled()`` is now true). Nothing in
  the generated code catches ``asyncio.CancelledError``, so trio's own Cancelled is the
  right exception and this module never imports asyncio. If READY is already in flight
  the Rust call has *completed* (its result is waiting in the Rust future); aborting then
  would throw away e.g. bytes already read, so the abort is refused
  (:attr:`trio.lowlevel.Abort.FAILED`), the result is delivered, and trio raises the
  cancellation at the task's next checkpoint. A WAKE in flight only means "poll again";
  the inner future has produced nothing yet, so the abort proceeds.

The pending-continuation count, ``len(iroh_ffi._UniffiContinuationHandleMap)``, is
exposed as :func:`pending_continuations`; it returns to its old value once calls finish
or are cancelled, which is how the tests prove that cancelled calls leak nothing.

Not bridged: the *async* callback APIs (``ProtocolHandler``/``EndpointOptions.protocols``,
``watch_addr``, ``watch_paths``, ``watch_*``). Rust drives those through
``asyncio.run_coroutine_threadsafe(coro, loop)``, which needs a real asyncio loop; the
shim's ``create_task`` refuses with :class:`BridgeError`. Gate never uses them: incoming
connections are pulled with ``Endpoint.accept_next()``. *Synchronous* callbacks (the
``Preset`` that configures the builder) are plain calls from Rust and need no loop.
A stray callable scheduled through the shim is logged if it fails, never allowed to
crash the trio run. While installed, the shim serves every iroh async call in the
process: iroh cannot also be driven from an asyncio loop here.

Speed:

* The generated helpers that copy bytes into and out of Rust buffers are replaced at
  import by :mod:`gate.services.transport.iroh_speedups` (same bytes, a fraction of the time).
* A continuation from a Rust thread runs inside a ctypes callback, and ctypes gives a
  thread that Python did not start a fresh thread state for each callback and frees it
  afterwards: an ``mmap`` and ``munmap`` of its 16 KiB frame stack, page faults, and a
  ``gettid`` every time. The first callback on each such thread calls
  ``PyGILState_Ensure`` once more and never releases it, so the thread keeps one thread
  state for the life of the process (Python's documented way for a foreign thread to
  keep its state; iroh's runtime threads live as long as the process). That work sat on
  every wakeup, so on every round trip: the README's Benchmarks has what removing it
  saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any, cast

import outcome
import trio
from iroh import iroh_ffi as _ffi

import gate.services.transport.iroh_speedups as iroh_speedups

__all__ = [
    "BridgeError",
    "TrioEventLoopShim",
    "TrioFuture",
    "end_interruptible",
    "install",
    "interrupt",
    "is_installed",
    "pending_continuations",
]

log = logging.getLogger(__name__)

# uniffi's RustFuturePoll values, as the generated module defines them.
_POLL_READY: int = _ffi._UNIFFI_RUST_FUTURE_POLL_READY


class BridgeError(RuntimeError):
    """The trio bridge is used where it cannot work (outside trio.run, a foreign callback)."""


# ---------------------------------------------------------------------------------------
# The future and the event-loop shim
# ---------------------------------------------------------------------------------------

_PENDING = "pending"
_DONE = "done"
_CANCELLED = "cancelled"


class TrioFuture:
    """The future that the generated coroutine awaits, resolved by a uniffi poll code.

    Implements exactly what the generated code uses of an asyncio future (``await``,
    ``cancelled()``, ``set_result()``) plus ``done()``/``result()``/``set_exception()``/
    ``cancel()`` for completeness. Lives on one trio run; awaited by one task, once.
    """

    __slots__ = ("_code", "_outcome", "_state", "_task", "_thread", "_token")

    def __init__(self, token: trio.lowlevel.TrioToken, thread: int) -> None:
        self._token = token
        self._thread = thread
        self._state = _PENDING
        self._outcome: outcome.Outcome[Any] | None = None
        self._task: trio.lowlevel.Task | None = None
        # The poll code Rust has reported but trio has not yet delivered (see module doc).
        self._code: int | None = None

    # -- what the generated code calls ------------------------------------------------

    def cancelled(self) -> bool:
        return self._state is _CANCELLED

    def done(self) -> bool:
        return self._state is not _PENDING

    def set_result(self, value: Any) -> None:
        self._resolve(outcome.Value(value))

    def set_exception(self, exception: BaseException) -> None:
        self._resolve(outcome.Error(exception))

    def cancel(self) -> bool:
        if self._state is not _PENDING or self._task is not None:
            # A waiting task is cancelled through trio, never behind its back.
            return False
        self._state = _CANCELLED
        return True

    def interrupt(self, exc: BaseException) -> bool:
        """Raise `exc` in the task waiting on this future, as a cancellation would (the
        generated code then frees the Rust future), unless Rust has completed the call:
        then its result is delivered, as an abort would refuse (see the module doc)."""
        if self._state is not _PENDING or self._task is None or self._code == _POLL_READY:
            return False
        task, self._task = self._task, None
        self._state = _CANCELLED
        trio.lowlevel.reschedule(task, outcome.Error(exc))
        return True

    def result(self) -> Any:
        if self._outcome is None:
            raise BridgeError(f"future is {self._state}, it has no result")
        return self._outcome.unwrap()

    def __await__(self) -> Generator[Any, None, Any]:
        if self._state is _PENDING:
            if self._task is not None:
                raise BridgeError("a uniffi future can be awaited by one task only")
            task = trio.lowlevel.current_task()
            if _interrupts and (exc := _interrupts.pop(task, None)) is not None:
                self._state = _CANCELLED  # as after an abort: the generated code frees it
                raise exc
            self._task = task
            task.custom_sleep_data = self  # how interrupt() finds the future it waits on
            # __await__ must be a generator, so trio's awaitables are delegated to with
            # `yield from`: their yields are trio's own traps, passed through untouched.
            parked = trio.lowlevel.wait_task_rescheduled(self._abort)  # noqa: ASYNC105
            return (yield from parked.__await__())
        if self._state is _CANCELLED:
            raise BridgeError("awaited a cancelled uniffi future")
        # Resolved before the await: uniffi reported the poll code synchronously from
        # inside poll(). READY means the Rust call has completed, so this is a schedule
        # point that must not raise Cancelled and throw the result away; WAKE only means
        # "poll again", so a full checkpoint (cancellable) is right.
        if self._code == _POLL_READY:
            yield from trio.lowlevel.cancel_shielded_checkpoint().__await__()  # noqa: ASYNC105
        else:
            yield from trio.lowlevel.checkpoint().__await__()  # noqa: ASYNC105
        assert self._outcome is not None
        return self._outcome.unwrap()

    # -- internals ----------------------------------------------------------------------

    def _resolve(self, result: outcome.Outcome[Any]) -> None:
        # Runs on the trio thread (directly or via run_sync_soon). Never raises: it is
        # called from a ctypes callback or a run_sync_soon callback, where an exception
        # would be unraisable or crash the run. Resolving twice or after cancel is a no-op.
        if self._state is not _PENDING:
            return
        self._state = _DONE
        self._outcome = result
        task, self._task = self._task, None
        if task is not None:
            try:
                trio.lowlevel.reschedule(task, result)
            except RuntimeError:  # pragma: no cover - the task's run is gone
                log.debug("uniffi future resolved after its trio run ended")

    def _abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        if self._code == _POLL_READY:
            # The Rust call completed; its result is one hop away. Deliver it; trio
            # raises the cancellation at the next checkpoint instead.
            return trio.lowlevel.Abort.FAILED
        self._state = _CANCELLED
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def __repr__(self) -> str:
        return f"<TrioFuture {self._state} code={self._code}>"


class TrioEventLoopShim:
    """Stands in for the asyncio loop in ``iroh_ffi._UNIFFI_GLOBAL_EVENT_LOOP``.

    One shim serves every trio run in the process: each future remembers the run
    (token and thread) whose task created it, and its completion is routed there.
    """

    def __init__(self) -> None:
        # For callables that do not carry a TrioFuture: the run that installed last.
        self._fallback_token: trio.lowlevel.TrioToken | None = None

    def create_future(self) -> TrioFuture:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            raise BridgeError(
                "an iroh async call was made outside trio.run while the trio bridge is "
                "installed; iroh can only be driven from trio in this process"
            ) from None
        return TrioFuture(token, threading.get_ident())

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> None:
        # Called by _uniffi_continuation_callback on any thread, inside a ctypes
        # callback: an exception here would be unraisable, so none escapes.
        try:
            self._schedule(fn, args)
        except Exception:  # pragma: no cover - defensive
            log.exception("trio bridge failed to schedule %r", fn)

    def _schedule(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        future = args[0] if args else None
        if isinstance(future, TrioFuture):
            if len(args) > 1 and isinstance(args[1], int):
                future._code = args[1]  # an attribute store: atomic under the GIL
            if threading.get_ident() == future._thread and _current_token() is future._token:
                fn(*args)  # on the future's own trio run: resolve now, no wakeup needed
                return
            token: trio.lowlevel.TrioToken | None = future._token
        else:
            token = self._fallback_token
            fn = _logged(fn)
        if token is None:
            log.warning("iroh scheduled %r with no trio run to run it; dropped", fn)
            return
        _keep_thread_state()
        # If the run that owned the future is over, nobody is waiting for it.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn, *args)

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        self.call_soon_threadsafe(fn, *args)

    def create_task(self, coro: Any, **kwargs: Any) -> Any:
        coro.close()  # never awaited: close it so no "coroutine was never awaited" warning
        raise BridgeError(
            "an iroh async callback API (ProtocolHandler, watch_*) tried to start an "
            "asyncio task; Gate's trio bridge does not run iroh callbacks"
        )

    def is_closed(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<TrioEventLoopShim>"


_THREADS_WITH_STATE: set[int] = set()
# iroh wakes futures from its one runtime thread. Should some other thread that comes and
# goes (a blocking-pool thread) call back too, at most this many states are kept.
_MAX_THREADS_WITH_STATE = 8


def _keep_thread_state() -> None:
    """Let the calling foreign thread keep its Python thread state (see the module doc).

    Runs with the GIL held, inside the ctypes callback's own PyGILState_Ensure; the extra
    Ensure only raises the thread's count, so ctypes' Release no longer frees the state.
    Threads Python started (threading) are skipped: they own their state already.
    """
    ident = threading.get_ident()
    if ident in _THREADS_WITH_STATE or len(_THREADS_WITH_STATE) >= _MAX_THREADS_WITH_STATE:
        return
    # A Python thread is not recorded, so it never uses up the bound (only tests call
    # back from one; iroh calls back from its own threads or from the trio thread).
    if any(thread.ident == ident for thread in threading.enumerate()):
        return
    _THREADS_WITH_STATE.add(ident)
    ctypes.pythonapi.PyGILState_Ensure()


def _current_token() -> trio.lowlevel.TrioToken | None:
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


def _logged(fn: Callable[..., object]) -> Callable[..., None]:
    def run(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("iroh callback %r failed under the trio bridge", fn)

    return run


# Interrupts waiting for a task that was between two iroh futures (see interrupt()).
_interrupts: dict[trio.lowlevel.Task, BaseException] = {}


def interrupt(task: trio.lowlevel.Task, exc: BaseException) -> None:
    """Make the iroh call `task` is in raise `exc`: at once if it waits on Rust, else when
    it next would (the generated code polls in a loop, one future per poll). Cheaper than
    a cancel scope around every call, which is what it replaces for a stream's own close;
    the caller ends the call with `end_interruptible(task)` however it ended."""
    future = task.custom_sleep_data
    if isinstance(future, TrioFuture) and future._task is task and future.interrupt(exc):
        return
    _interrupts[task] = exc


def end_interruptible(task: trio.lowlevel.Task) -> None:
    """The call `task` was in has ended: an interrupt that did not reach it is dropped."""
    if _interrupts:
        _interrupts.pop(task, None)


_SHIM = TrioEventLoopShim()
_INSTALLED: trio.lowlevel.RunVar[bool] = trio.lowlevel.RunVar("gate_iroh_trio_installed", False)


def install() -> None:
    """Make iroh's async calls run on the current trio run. Idempotent per run.

    Must be called from inside ``trio.run`` (it records the run's token); raises
    :class:`BridgeError` otherwise. (The speed-ups of :mod:`gate.services.transport.iroh_speedups`
    are applied when this module is imported.)
    """
    try:
        token = trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise BridgeError(
            "gate.services.transport.iroh_trio.install() must be called inside trio.run"
        ) from None
    if _INSTALLED.get() and _ffi._UNIFFI_GLOBAL_EVENT_LOOP is _SHIM:
        return
    _SHIM._fallback_token = token
    _ffi.uniffi_set_event_loop(cast(Any, _SHIM))  # typed for asyncio; duck-typed in use
    _INSTALLED.set(True)


def is_installed() -> bool:
    """True when called inside a trio run that has called :func:`install`."""
    try:
        return _INSTALLED.get() and _ffi._UNIFFI_GLOBAL_EVENT_LOOP is _SHIM
    except RuntimeError:
        return False


def pending_continuations() -> int:
    """How many uniffi continuations are waiting on Rust (0 when no iroh call is pending)."""
    return len(_ffi._UniffiContinuationHandleMap)


iroh_speedups.apply()
