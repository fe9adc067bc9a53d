"""The trio bridge for iroh's uniffi bindings: driving, cancelling, leaking nothing.

These tests call iroh's own (raw) API, so they test the bridge and not Gate's
transport layer on top of it. Loopback only, relays off, no discovery.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import iroh
import pytest
import trio
import trio.testing
from iroh import iroh_ffi

from gate.services.transport import iroh_trio
from gate.services.transport.iroh_trio import BridgeError, TrioEventLoopShim, TrioFuture

ALPN = b"gate-test/bridge"
READY = iroh_ffi._UNIFFI_RUST_FUTURE_POLL_READY
WAKE = iroh_ffi._UNIFFI_RUST_FUTURE_POLL_WAKE


async def bind_raw() -> iroh.Endpoint:
    iroh_trio.install()
    options = iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr="127.0.0.1:0",
        alpns=[ALPN],
        relay_mode=iroh.RelayMode.disabled(),
    )
    return await iroh.Endpoint.bind(options)


def addr_of(endpoint: iroh.Endpoint) -> iroh.EndpointAddr:
    return iroh.EndpointAddr(endpoint.id(), None, endpoint.addr().direct_addresses())


async def echo_server(endpoint: iroh.Endpoint) -> None:
    """Accept connections forever; echo every bidirectional stream until its EOF."""

    async def echo(bi: iroh.BiStream) -> None:
        recv, send = bi.recv(), bi.send()
        while data := await recv.read(65536):
            await send.write_all(data)
        await send.finish()

    async def serve(incoming: iroh.Incoming) -> None:
        try:
            conn = await (await incoming.accept()).connect()
        except iroh.IrohError:  # a failed handshake (e.g. the dialer wanted another id)
            return
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    bi = await conn.accept_bi()
                except iroh.IrohError:
                    return
                nursery.start_soon(echo, bi)

    async with trio.open_nursery() as nursery:
        while (incoming := await endpoint.accept_next()) is not None:
            nursery.start_soon(serve, incoming)


async def echo_once(conn: iroh.Connection, payload: bytes) -> bytes:
    bi = await conn.open_bi()
    send, recv = bi.send(), bi.recv()
    await send.write_all(payload)
    await send.finish()
    return await recv.read_to_end(len(payload) + 1)


@pytest.fixture
async def server():
    """A raw iroh endpoint running an echo server, and a client endpoint.

    On the way out, every iroh call the test started must have finished or been freed.
    """
    iroh_trio.install()
    baseline = iroh_trio.pending_continuations()
    server, client = await bind_raw(), await bind_raw()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_server, server)
        yield server, client
        nursery.cancel_scope.cancel()
    with trio.fail_after(10):
        await client.close()
        await server.close()
        assert await settled_pending(baseline) == baseline


async def settled_pending(baseline: int) -> int:
    """The pending-continuation count once in-flight wakeups have been delivered."""
    for _ in range(100):
        if iroh_trio.pending_continuations() <= baseline:
            break
        await trio.sleep(0.01)
    return iroh_trio.pending_continuations()


# ---------------------------------------------------------------------------------------
# install()
# ---------------------------------------------------------------------------------------


def test_install_outside_trio_fails_clearly():
    with pytest.raises(BridgeError, match=r"must be called inside trio\.run"):
        iroh_trio.install()
    assert not iroh_trio.is_installed()


def test_create_future_outside_trio_fails_clearly():
    with pytest.raises(BridgeError, match=r"outside trio\.run"):
        TrioEventLoopShim().create_future()


async def test_install_is_idempotent_and_sets_the_uniffi_hook():
    iroh_trio.install()
    hook = iroh_ffi._UNIFFI_GLOBAL_EVENT_LOOP
    iroh_trio.install()
    assert iroh_ffi._UNIFFI_GLOBAL_EVENT_LOOP is hook
    assert isinstance(hook, TrioEventLoopShim)
    assert iroh_ffi._uniffi_get_event_loop() is hook
    assert iroh_trio.is_installed()


def test_install_works_in_consecutive_runs():
    async def one_bind() -> bytes:
        endpoint = await bind_raw()
        try:
            return endpoint.id().to_bytes()
        finally:
            await endpoint.close()

    first = trio.run(one_bind)
    second = trio.run(one_bind)
    assert len(first) == len(second) == 32
    assert first != second


def test_iroh_runs_in_a_trio_run_in_another_thread():
    """Futures are routed to the run that created them, whatever thread Rust wakes on."""
    results: list[bytes] = []

    def worker() -> None:
        async def main() -> None:
            endpoint = await bind_raw()
            results.append(endpoint.id().to_bytes())
            await endpoint.close()

        trio.run(main)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert len(results) == 1


def test_bytes_reach_rust_unchanged():
    raw = os.urandom(32)
    assert iroh.SecretKey.from_bytes(raw).to_bytes() == raw
    public = iroh.SecretKey.from_bytes(raw).public().to_bytes()
    assert iroh.EndpointId.from_bytes(public).to_bytes() == public


# ---------------------------------------------------------------------------------------
# Driving iroh
# ---------------------------------------------------------------------------------------


async def test_fifty_concurrent_connections(server):
    server_ep, client = server
    replies: dict[int, bytes] = {}

    async def one(i: int) -> None:
        conn = await client.connect(addr_of(server_ep), ALPN)
        replies[i] = await echo_once(conn, b"hello %d" % i)
        conn.close(0, b"")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
    assert replies == {i: b"hello %d" % i for i in range(50)}


async def test_fifty_concurrent_streams_on_one_connection(server):
    server_ep, client = server
    with trio.fail_after(10):
        conn = await client.connect(addr_of(server_ep), ALPN)
        replies: dict[int, bytes] = {}

        async def one(i: int) -> None:
            replies[i] = await echo_once(conn, os.urandom(i * 1000))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert sorted(len(reply) for reply in replies.values()) == [i * 1000 for i in range(50)]
        conn.close(0, b"")


async def test_iroh_errors_surface_as_exceptions(server):
    server_ep, client = server
    stranger = iroh.SecretKey.generate().public()
    wrong = iroh.EndpointAddr(stranger, None, server_ep.addr().direct_addresses())
    with trio.fail_after(10), pytest.raises(iroh.IrohError) as info:
        await client.connect(wrong, ALPN)
    assert info.value.kind() == iroh.IrohErrorKind.CONNECT


# ---------------------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------------------


async def test_cancelling_accept_100_times_leaks_nothing(server):
    _, client = server
    idle = await bind_raw()
    try:
        baseline = iroh_trio.pending_continuations()
        started = time.monotonic()
        for _ in range(100):
            with trio.move_on_after(0.002) as scope:
                await idle.accept_next()
            assert scope.cancelled_caught
        assert time.monotonic() - started < 5  # each cancel returned promptly
        assert await settled_pending(baseline) == baseline

        # The endpoint still accepts: dial it while a fresh accept waits.
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo_server, idle)
                conn = await client.connect(addr_of(idle), ALPN)
                assert await echo_once(conn, b"still alive") == b"still alive"
                conn.close(0, b"")
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await idle.close()


async def test_cancelling_connect_to_a_silent_address_100_times(server):
    server_ep, client = server
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as silent:
        await silent.bind(("127.0.0.1", 0))
        host, port = silent.getsockname()
        baseline = iroh_trio.pending_continuations()
        started = time.monotonic()
        for _ in range(100):
            target = iroh.EndpointAddr(iroh.SecretKey.generate().public(), None, [f"{host}:{port}"])
            with trio.move_on_after(0.005) as scope:
                await client.connect(target, ALPN)
            assert scope.cancelled_caught
        assert time.monotonic() - started < 10
        assert await settled_pending(baseline) == baseline

    with trio.fail_after(10):
        conn = await client.connect(addr_of(server_ep), ALPN)
        assert await echo_once(conn, b"after") == b"after"
        conn.close(0, b"")


async def test_cancelled_reads_do_not_drop_bytes_exactly(server):
    """Count every byte: what cancelled reads returned plus what is left is everything."""
    server_ep, client = server
    with trio.fail_after(10):
        conn = await client.connect(addr_of(server_ep), ALPN)
        bi = await conn.open_bi()
        send, recv = bi.send(), bi.recv()
        got = bytearray()

        async def reader() -> None:
            while True:
                with trio.move_on_after(0.0003):
                    data = await recv.read(7)
                    if not data:
                        return
                    got.extend(data)

        expected = bytes(range(256)) * 40
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for offset in range(0, len(expected), 100):
                await send.write_all(expected[offset : offset + 100])
                await trio.lowlevel.checkpoint()
            await send.finish()
        assert bytes(got) == expected
        conn.close(0, b"")


# ---------------------------------------------------------------------------------------
# The future, unit by unit (what the generated code and uniffi's callback do to it)
# ---------------------------------------------------------------------------------------


async def test_abort_is_refused_when_ready_is_in_flight():
    """A completed Rust call's result is delivered; the cancel lands at the next checkpoint."""
    future = TrioEventLoopShim().create_future()
    record: list[object] = []

    async def waiter(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            record.append(await future)
            record.append("returned")
            await trio.lowlevel.checkpoint()
            record.append("not reached")
        record.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        future._code = READY  # uniffi reported READY from a Rust thread...
        scope.cancel()  # ...and the cancel arrives before trio ran set_result
        assert not future.cancelled()
        future.set_result(READY)
    assert record == [READY, "returned", True]


async def test_abort_succeeds_when_only_wake_is_in_flight():
    future = TrioEventLoopShim().create_future()
    record: list[object] = []

    async def waiter(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            record.append(await future)
        record.append(scope.cancelled_caught)

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        future._code = WAKE
        scope.cancel()
        assert future.cancelled()
        iroh_ffi._uniffi_set_future_result(future, WAKE)  # late delivery: ignored
    assert record == [True]


async def test_result_reported_before_await_survives_a_pending_cancel():
    shim = TrioEventLoopShim()
    future = shim.create_future()
    # On the trio thread, uniffi's callback resolves the future at once.
    shim.call_soon_threadsafe(iroh_ffi._uniffi_set_future_result, future, READY)
    assert future.done()
    with trio.CancelScope() as scope:
        scope.cancel()
        assert await future == READY
    assert not scope.cancelled_caught
    # ...but a WAKE is only "poll again": that await is a full, cancellable checkpoint.
    future = shim.create_future()
    shim.call_soon_threadsafe(iroh_ffi._uniffi_set_future_result, future, WAKE)
    with trio.CancelScope() as scope:
        scope.cancel()
        await future
    assert scope.cancelled_caught


# A stream's own close interrupts its call through the bridge (no cancel scope per call).


class _Closed(Exception):
    pass


async def test_an_interrupt_raises_in_the_waiting_task_and_a_late_result_is_ignored():
    future = TrioEventLoopShim().create_future()
    record: list[object] = []

    async def waiter(task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(trio.lowlevel.current_task())
        try:
            await future
        except _Closed:
            record.append("interrupted")

    async with trio.open_nursery() as nursery:
        task = await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        iroh_trio.interrupt(task, _Closed())
        assert future.cancelled()  # the generated code frees the Rust future...
        iroh_ffi._uniffi_set_future_result(future, READY)  # ...whose last word is ignored
    assert record == ["interrupted"]
    iroh_trio.end_interruptible(task)


async def test_an_interrupt_lets_a_completed_call_deliver_its_result():
    """READY in flight: the bytes Rust has read are not thrown away (as for an abort)."""
    future = TrioEventLoopShim().create_future()
    record: list[object] = []

    async def waiter(task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(trio.lowlevel.current_task())
        record.append(await future)

    async with trio.open_nursery() as nursery:
        task = await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        future._code = READY
        iroh_trio.interrupt(task, _Closed())
        assert not future.cancelled()
        future.set_result(READY)
        iroh_trio.end_interruptible(task)  # the call ended: the kept interrupt goes
    assert record == [READY]
    assert not iroh_trio._interrupts


async def test_an_interrupt_between_two_polls_lands_on_the_next_one():
    """The generated code polls in a loop, a new future each time: an interrupt that
    finds the task between two is kept for its next wait, not lost."""
    shim = TrioEventLoopShim()
    record: list[object] = []
    between = trio.Event()
    go_on = trio.Event()

    async def waiter(task_status=trio.TASK_STATUS_IGNORED) -> None:
        task = trio.lowlevel.current_task()
        task_status.started(task)
        between.set()
        await go_on.wait()  # not on an iroh future
        future = shim.create_future()
        try:
            await future
        except _Closed:
            record.append(future.cancelled())
        finally:
            iroh_trio.end_interruptible(task)

    async with trio.open_nursery() as nursery:
        task = await nursery.start(waiter)
        await between.wait()
        await trio.testing.wait_all_tasks_blocked()
        iroh_trio.interrupt(task, _Closed())
        go_on.set()
    assert record == [True]
    assert not iroh_trio._interrupts


async def test_wakeup_from_another_thread_reschedules_the_task():
    shim = TrioEventLoopShim()
    future = shim.create_future()

    def rust_thread() -> None:
        time.sleep(0.01)
        shim.call_soon_threadsafe(iroh_ffi._uniffi_set_future_result, future, WAKE)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, rust_thread)
            assert await future == WAKE


async def test_a_rust_thread_keeps_its_python_state_between_wakeups(server, monkeypatch):
    """ctypes gives a foreign thread a fresh thread state per callback and frees it after;
    the bridge keeps one per thread, so a thread-local set in one wakeup is there in the
    next (it would be gone with a fresh state)."""
    marks: dict[int, list[int | None]] = {}
    local = threading.local()
    keep = iroh_trio._keep_thread_state

    def keep_and_mark() -> None:
        keep()
        ident = threading.get_ident()
        if any(thread.ident == ident for thread in threading.enumerate()):
            return  # a thread Python started: not what this test is about
        seen = marks.setdefault(ident, [])
        seen.append(getattr(local, "mark", None))
        local.mark = len(seen)

    monkeypatch.setattr(iroh_trio, "_keep_thread_state", keep_and_mark)
    server_endpoint, client = server
    with trio.fail_after(10):
        conn = await client.connect(addr_of(server_endpoint), ALPN)
        for _ in range(3):
            assert await echo_once(conn, b"ping") == b"ping"
        conn.close(0, b"done")
    woken_often = [seen for seen in marks.values() if len(seen) >= 2]
    assert woken_often, marks  # Rust threads did wake trio tasks
    for seen in woken_often:
        assert seen == [None, *range(1, len(seen))]


def test_wakeup_after_the_run_ended_is_dropped_silently():
    shim = TrioEventLoopShim()

    async def make() -> TrioFuture:
        return shim.create_future()

    future = trio.run(make)
    thread = threading.Thread(
        target=shim.call_soon_threadsafe,
        args=(iroh_ffi._uniffi_set_future_result, future, READY),
    )
    thread.start()
    thread.join()
    shim.call_soon_threadsafe(iroh_ffi._uniffi_set_future_result, future, READY)
    assert not future.done()  # nobody ran it, and nothing raised


async def test_a_failing_foreign_callable_is_logged_not_raised(caplog):
    iroh_trio.install()
    shim = iroh_ffi._UNIFFI_GLOBAL_EVENT_LOOP
    caplog.set_level(logging.ERROR, logger="gate.services.transport.iroh_trio")
    shim.call_soon_threadsafe(lambda: 1 / 0)
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.01)
    assert "failed under the trio bridge" in caplog.text


def test_async_callback_apis_are_refused_without_leaking_a_coroutine():
    async def callback() -> None:  # pragma: no cover - never runs
        pass

    with pytest.raises(BridgeError, match="callback"):
        TrioEventLoopShim().create_task(callback())


async def test_a_future_is_awaited_by_one_task_only():
    future = TrioEventLoopShim().create_future()
    results: list[int] = []

    async def first() -> None:
        results.append(await future)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(BridgeError, match="one task"):
            await future
        future.set_result(READY)
    assert results == [READY]
