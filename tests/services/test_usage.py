"""The usage recorder end to end, against a real gate.db in tmp_path.

Real time, not the autojump clock: the store works in worker threads, and autojump would
jump to the fail_after deadline while a task waits for one.
"""

from __future__ import annotations

import logging
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterable
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio

from gate.errors import StoreError
from gate.nursery import Service, ServiceContext, Supervisor
from gate.services.store.database import Params, Store
from gate.services.store.usage import _INSERT, UsageRecord, UsageRecorder, query_usage


class CountingStore(Store):
    """A real Store that remembers the size of each executemany and can fail on demand."""

    batches: list[int]
    failures: int  # how many executemany calls fail from now on

    async def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> int:
        rows = list(seq_of_params)
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("disk on fire (injected)")
        self.batches.append(len(rows))
        return await super().executemany(sql, rows)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    with trio.fail_after(10):
        db = await CountingStore.open(tmp_path / "gate.db")
    assert isinstance(db, CountingStore)
    db.batches, db.failures = [], 0
    try:
        yield db
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await db.close()


def make(i: int, **changes: object) -> UsageRecord:
    fields: dict[str, object] = {
        "ts": 1_700_000_000.0 + i,
        "client": f"client-{i % 3}",
        "model": f"model-{i % 2}",
        "provider": "ollama",
        "peer": None,
        "status": 200,
        "latency_ms": 10.0 + i,
        "ttft_ms": 1.5,
        "tokens_in": i,
        "tokens_out": 2 * i,
        "error": None,
        "endpoint": "/v1/chat/completions",
    }
    fields.update(changes)
    return UsageRecord(**fields)  # type: ignore[arg-type]


async def rows(store: Store) -> list[UsageRecord]:
    return await query_usage(store, limit=10_000)


async def wait_written(recorder: UsageRecorder, n: int) -> None:
    # Polling: the recorder has no event for "written" (and needs none outside tests).
    while recorder.statistics()["written"] < n:  # noqa: ASYNC110
        await trio.sleep(0.005)


async def drain(recorder: UsageRecorder, store: Store, jsonl_path: Path | None = None) -> None:
    """The recorder run already told to stop: it writes what it holds, then returns."""
    ctx = ServiceContext("usage")
    ctx.shutdown.set()
    with trio.fail_after(10):
        await recorder.run(ctx, store, jsonl_path=jsonl_path)


async def test_records_reach_the_database(store: CountingStore) -> None:
    recorder = UsageRecorder()
    ctx = ServiceContext("usage")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run, ctx, store)
            records = [make(i, peer="peer-x", error="timeout", ttft_ms=None) for i in range(5)]
            for rec in records:
                recorder.record(rec)
            await wait_written(recorder, 5)
            ctx.shutdown.set()
    assert await rows(store) == records[::-1]  # newest first, every field round-trips
    assert recorder.statistics() == {
        "queued": 0,
        "written": 5,
        "dropped": 0,
        "dropped_queue_full": 0,
        "dropped_store_error": 0,
        "store_errors": 0,
        "jsonl_errors": 0,
    }


async def test_what_is_queued_is_written_in_batches(store: CountingStore) -> None:
    recorder = UsageRecorder(batch_size=500)
    for i in range(1_200):
        recorder.record(make(i))
    assert recorder.statistics()["queued"] == 1_200
    ctx = ServiceContext("usage")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run, ctx, store)
            await wait_written(recorder, 1_200)
            ctx.shutdown.set()
    assert store.batches == [500, 500, 200]
    assert len(await rows(store)) == 1_200


async def test_nothing_accepted_before_shutdown_is_lost(store: CountingStore) -> None:
    recorder = UsageRecorder()
    ctx = ServiceContext("usage")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run, ctx, store)
            for i in range(1_000):
                recorder.record(make(i))
                if i % 100 == 0:
                    await trio.lowlevel.checkpoint()  # let the writer start a batch mid-stream
            ctx.shutdown.set()
    stored = await rows(store)
    assert len(stored) == 1_000
    assert [r.tokens_in for r in reversed(stored)] == list(range(1_000))  # in order, once
    assert recorder.statistics()["queued"] == 0
    assert max(store.batches) <= 500


async def test_records_arriving_during_the_drain_are_written(store: CountingStore) -> None:
    recorder = UsageRecorder(batch_size=10)
    ctx = ServiceContext("usage")
    for i in range(50):
        recorder.record(make(i))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ctx.shutdown.set()  # already stopping: it only drains
            nursery.start_soon(partial(recorder.run, ctx, store))

            async def late_requests() -> None:
                for i in range(50, 60):
                    await trio.lowlevel.checkpoint()
                    recorder.record(make(i))

            nursery.start_soon(late_requests)
    assert len(await rows(store)) == 60


async def test_the_writer_is_a_supervised_service(store: CountingStore) -> None:
    recorder = UsageRecorder()
    supervisor = Supervisor([Service("usage", partial(recorder.run, store=store), critical=False)])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            for i in range(300):
                recorder.record(make(i))
            supervisor.request_shutdown("test")
    assert supervisor.statistics()["usage"].restarts == 0
    assert len(await rows(store)) == 300


async def test_a_full_queue_drops_counts_and_warns_once(
    store: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = UsageRecorder(capacity=5)
    with caplog.at_level(logging.WARNING, logger="gate.usage"):
        for i in range(8):
            recorder.record(make(i))  # never raises, never blocks
    stats = recorder.statistics()
    assert (stats["queued"], stats["dropped"], stats["dropped_queue_full"]) == (5, 3, 3)
    assert recorder.dropped == 3
    warnings = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(warnings) == 1  # at most once per 10 s

    await drain(recorder, store)
    assert [r.tokens_in for r in await rows(store)] == [4, 3, 2, 1, 0]  # the first five


async def test_a_failed_write_is_retried_once(
    store: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = UsageRecorder()
    store.failures = 1
    for i in range(3):
        recorder.record(make(i))
    with caplog.at_level(logging.WARNING, logger="gate.usage"):
        await drain(recorder, store)
    assert len(await rows(store)) == 3
    stats = recorder.statistics()
    assert (stats["written"], stats["dropped"], stats["store_errors"]) == (3, 0, 1)
    assert any("retrying" in r.getMessage() for r in caplog.records)


async def test_a_batch_that_fails_twice_is_dropped_and_the_writer_goes_on(
    store: CountingStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = UsageRecorder(batch_size=4)
    store.failures = 2
    for i in range(6):
        recorder.record(make(i))
    with caplog.at_level(logging.WARNING, logger="gate.usage"):
        await drain(recorder, store)
    assert [r.tokens_in for r in await rows(store)] == [5, 4]  # the second batch
    stats = recorder.statistics()
    assert (stats["written"], stats["dropped"], stats["dropped_store_error"]) == (2, 4, 4)
    assert any(r.levelno == logging.ERROR and "dropped" in r.getMessage() for r in caplog.records)


async def test_a_closed_store_does_not_crash_the_writer(tmp_path: Path) -> None:
    db = await Store.open(tmp_path / "gate.db")
    await db.close()
    recorder = UsageRecorder()
    recorder.record(make(0))
    await drain(recorder, db)
    assert recorder.statistics()["dropped"] == 1


async def test_jsonl_lines_are_appended(store: CountingStore, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "usage.jsonl"
    recorder = UsageRecorder(batch_size=7)
    records = [make(i, error='boom\nwith "quotes"') for i in range(20)]
    for run in (records[:10], records[10:]):  # two runs: the second one appends
        for rec in run:
            recorder.record(rec)
        await drain(recorder, store, jsonl_path=path)
    lines = path.read_bytes().splitlines()
    assert [msgspec.json.decode(line, type=UsageRecord) for line in lines] == records
    assert msgspec.json.decode(lines[0])["endpoint"] == "/v1/chat/completions"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(await rows(store)) == 20


async def test_a_jsonl_failure_is_counted_and_the_database_still_written(
    store: CountingStore, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    recorder = UsageRecorder()
    recorder.record(make(0))
    await drain(recorder, store, jsonl_path=blocker / "usage.jsonl")
    stats = recorder.statistics()
    assert (stats["written"], stats["jsonl_errors"]) == (1, 1)


# --- query_usage ---


@pytest.fixture
async def filled(store: CountingStore) -> CountingStore:
    recorder = UsageRecorder()
    for i in range(30):
        recorder.record(make(i))
    recorder.record(make(30, ts=1_700_000_029.0))  # the same ts as record 29
    await drain(recorder, store)
    return store


async def test_query_is_newest_first_with_ties_by_insertion(filled: CountingStore) -> None:
    with trio.fail_after(10):
        got = await query_usage(filled, limit=3)
    assert [r.tokens_in for r in got] == [30, 29, 28]


async def test_query_pages_cover_everything_once(filled: CountingStore) -> None:
    seen: list[int | None] = []
    with trio.fail_after(10):
        for offset in range(0, 40, 7):
            seen += [r.tokens_in for r in await query_usage(filled, limit=7, offset=offset)]
    assert seen == list(range(30, -1, -1))


async def test_query_filters_combine(filled: CountingStore) -> None:
    with trio.fail_after(10):
        by_model = await query_usage(filled, model="model-1")
        by_both = await query_usage(filled, model="model-1", client="client-0")
        recent = await query_usage(filled, since=1_700_000_025.0)
        all_three = await query_usage(
            filled, model="model-0", client="client-2", since=1_700_000_010.0
        )
        none = await query_usage(filled, model="nope")
    assert [r.tokens_in for r in by_model] == list(range(29, 0, -2))
    assert [r.tokens_in for r in by_both] == [27, 21, 15, 9, 3]
    assert [r.tokens_in for r in recent] == [30, 29, 28, 27, 26, 25]
    assert [r.tokens_in for r in all_three] == [26, 20, 14]
    assert none == []


async def test_the_door_is_recorded_and_filters(store: CountingStore) -> None:
    recorder = UsageRecorder()
    for i, door in enumerate(["local", "peer", "relay", "relay", None]):
        recorder.record(make(i, door=door))
    with trio.fail_after(10):
        await drain(recorder, store)
        everything = await query_usage(store)
        relayed = await query_usage(store, door="relay")
    assert [r.door for r in everything] == [None, "relay", "relay", "peer", "local"]
    assert [r.tokens_in for r in relayed] == [3, 2]


async def test_query_reads_rows_without_an_endpoint(store: CountingStore) -> None:
    with trio.fail_after(10):
        await store.execute(
            "INSERT INTO usage (ts, client, model, status, latency_ms) VALUES (?, ?, ?, ?, ?)",
            (5.0, "old", "m", 200, 3.0),
        )
        (rec,) = await query_usage(store)
    assert (rec.endpoint, rec.provider, rec.tokens_in) == ("", None, None)


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (10_001, 0), (10, -1)])
async def test_query_bounds_are_checked(store: CountingStore, limit: int, offset: int) -> None:
    with pytest.raises(ValueError):
        await query_usage(store, limit=limit, offset=offset)


def test_the_insert_names_its_columns() -> None:
    """The insert names its columns: a reordered table still gets the right values."""
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE usage (endpoint TEXT, id INTEGER PRIMARY KEY, error TEXT, ts REAL,"
        " client TEXT, model TEXT, provider TEXT, peer TEXT, status INTEGER,"
        " latency_ms REAL, ttft_ms REAL, tokens_in INTEGER, tokens_out INTEGER,"
        " tokens_source TEXT, door TEXT)"
    )
    conn.execute(_INSERT, msgspec.structs.astuple(make(7)))
    assert conn.execute("SELECT endpoint, tokens_in, error FROM usage").fetchall() == [
        ("/v1/chat/completions", 7, None)
    ]
    conn.close()
