"""gate.db: migrations, transactions, serialized access, and closing under cancellation."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest
import trio

from gate.errors import StoreError
from gate.services.store import database as store_module
from gate.services.store.database import MIGRATIONS, Store, open_store

USAGE_INSERT = (
    "INSERT INTO usage (ts, client, model, provider, peer, status, latency_ms, ttft_ms,"
    " tokens_in, tokens_out, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
USAGE_ROW = (1700000000.5, "cli", "llama3", "ollama", None, 200, 812.5, 95.25, 17, 256, None)


def raw_user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def raw_tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    return {name for (name,) in rows}


async def test_fresh_database_is_created_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "data" / "gate.db"
    with trio.fail_after(10):
        async with open_store(path) as store:
            assert store.schema_version == len(MIGRATIONS)
            assert await store.fetchall("PRAGMA user_version") == [(len(MIGRATIONS),)]
            assert await store.fetchall("PRAGMA journal_mode") == [("wal",)]
            assert await store.fetchall("PRAGMA foreign_keys") == [(1,)]
            assert await store.fetchall("PRAGMA busy_timeout") == [(5000,)]
            assert await store.fetchall("PRAGMA synchronous") == [(1,)]  # NORMAL
            names = await store.fetchall(
                "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            )
            assert set(names) >= {("table", "usage"), ("table", "api_keys"), ("index", "usage_ts")}
            columns = [row[1] for row in await store.fetchall("PRAGMA table_info(usage)")]
            assert columns == [
                "id",
                "ts",
                "client",
                "model",
                "provider",
                "peer",
                "status",
                "latency_ms",
                "ttft_ms",
                "tokens_in",
                "tokens_out",
                "error",
                "endpoint",
                "tokens_source",
                "door",
            ]
    assert raw_user_version(path) == len(MIGRATIONS)


async def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    with trio.fail_after(10):
        async with open_store(path) as store:
            await store.execute(USAGE_INSERT, USAGE_ROW)
        for _ in range(2):
            async with open_store(path) as store:
                assert store.schema_version == len(MIGRATIONS)
                assert await store.fetchall("SELECT count(*) FROM usage") == [(1,)]


async def test_insert_and_fetch_round_trip(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_store(tmp_path / "gate.db") as store:
            assert await store.execute(USAGE_INSERT, USAGE_ROW) == 1
            rows = await store.fetchall(
                "SELECT ts, client, model, provider, peer, status, latency_ms, ttft_ms,"
                " tokens_in, tokens_out, error FROM usage"
            )
            assert rows == [USAGE_ROW]
            changed = await store.executemany(
                "INSERT INTO api_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)",
                [("k1", "laptop", "h1", 1.0), ("k2", "phone", "h2", 2.0)],
            )
            assert changed == 2
            revoked = await store.execute(
                "UPDATE api_keys SET revoked_at = :now WHERE id = :id", {"now": 3.0, "id": "k1"}
            )
            assert revoked == 1
            assert await store.fetchall(
                "SELECT id, name, revoked_at FROM api_keys ORDER BY id"
            ) == [("k1", "laptop", 3.0), ("k2", "phone", None)]


async def test_a_failing_batch_is_rolled_back_whole(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_store(tmp_path / "gate.db") as store:
            with pytest.raises(StoreError, match="UNIQUE constraint failed"):
                await store.executemany(
                    "INSERT INTO api_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)",
                    [("k1", "a", "same", 1.0), ("k2", "b", "same", 2.0)],
                )
            assert await store.fetchall("SELECT count(*) FROM api_keys") == [(0,)]
            # The connection is usable afterwards: no transaction was left open.
            assert await store.execute(USAGE_INSERT, USAGE_ROW) == 1


async def test_sql_errors_become_store_errors_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    with trio.fail_after(10):
        async with open_store(path) as store:
            with pytest.raises(StoreError, match="no such table") as info:
                await store.fetchall("SELECT * FROM nowhere")
            assert str(path) in str(info.value)
            assert isinstance(info.value.__cause__, sqlite3.Error)


async def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE future (x)")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with (
        trio.fail_after(10),
        pytest.raises(StoreError, match="created by a newer Gate; upgrade Gate"),
    ):
        await Store.open(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["gate.db"]  # not even switched to WAL


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    content = b"this is not sqlite\n" * 64
    path.write_bytes(content)
    with trio.fail_after(10), pytest.raises(StoreError, match="file is not a database") as info:
        await Store.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content


async def test_a_directory_in_the_way_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    path.mkdir()
    with trio.fail_after(10), pytest.raises(StoreError, match=re.escape(str(path))):
        await Store.open(path)


async def test_a_failing_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gate.db"
    broken = "CREATE TABLE partial (x INTEGER); CREATE TABLE broken (;"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, broken))
    with (
        trio.fail_after(10),
        pytest.raises(StoreError, match=f"to version {len(MIGRATIONS) + 1}"),
    ):
        await Store.open(path)
    # Every good migration before it was committed; none of the broken one was.
    assert raw_user_version(path) == len(MIGRATIONS)
    tables = raw_tables(path)
    assert "partial" not in tables
    assert {"usage", "api_keys"} <= tables
    # Once the script is fixed, the migration goes through.
    fixed = "CREATE TABLE partial (x INTEGER); CREATE TABLE fixed (y);"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, fixed))
    with trio.fail_after(10):
        async with open_store(path) as store:
            assert store.schema_version == len(MIGRATIONS) + 1
    assert {"partial", "fixed"} <= raw_tables(path)


async def test_a_failing_first_migration_leaves_an_empty_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gate.db"
    monkeypatch.setattr(store_module, "MIGRATIONS", ("CREATE TABLE a (x); SELECT * FROM nowhere;",))
    with trio.fail_after(10), pytest.raises(StoreError, match="no such table: nowhere"):
        await Store.open(path)
    assert raw_user_version(path) == 0
    assert raw_tables(path) == set()


async def test_two_openers_do_not_apply_a_migration_twice(tmp_path: Path) -> None:
    # Another process holds the write lock mid-migration; our opener reads version 0,
    # then waits for the lock, and must re-read the version once it gets it.
    path = tmp_path / "gate.db"
    rival = sqlite3.connect(path, isolation_level=None)
    rival.execute("PRAGMA journal_mode = WAL")
    rival.execute("BEGIN IMMEDIATE")
    for statement in store_module._split_statements(MIGRATIONS[0]):
        rival.execute(statement)
    rival.execute("PRAGMA user_version = 1")
    opened: list[Store] = []

    async def open_one() -> None:
        opened.append(await Store.open(path))

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(open_one)
                await trio.sleep(0.3)  # let it read version 0 and block on the lock
                assert not opened
                rival.execute("COMMIT")
    finally:
        rival.close()
    [store] = opened
    with trio.fail_after(10):
        assert store.schema_version == len(MIGRATIONS)
        await store.close()


async def test_concurrent_writes_all_land(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_store(tmp_path / "gate.db") as store:

            async def writer(n: int) -> None:
                for i in range(5):
                    await store.execute(
                        "INSERT INTO usage (ts, client) VALUES (?, ?)", (float(i), f"task-{n}")
                    )

            async with trio.open_nursery() as nursery:
                for n in range(20):
                    nursery.start_soon(writer, n)
            assert await store.fetchall("SELECT count(*), count(DISTINCT client) FROM usage") == [
                (100, 20)
            ]


async def test_cancellation_still_closes_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "gate.db"
    opened: list[Store] = []
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with open_store(path) as store:
                opened.append(store)
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        [store] = opened
        assert store.closed
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            store._conn.execute("SELECT 1")
        async with open_store(path) as again:
            assert again.schema_version == len(MIGRATIONS)


async def test_a_closed_store_refuses_work_and_closes_once(tmp_path: Path) -> None:
    with trio.fail_after(10):
        store = await Store.open(tmp_path / "gate.db")
        await store.close()
        await store.close()
        assert store.closed
        with pytest.raises(StoreError, match="is closed"):
            await store.fetchall("SELECT 1")
        with pytest.raises(StoreError, match="is closed"):
            await store.execute(USAGE_INSERT, USAGE_ROW)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("CREATE TABLE a (x); CREATE TABLE b (y);", ["CREATE TABLE a (x);", "CREATE TABLE b (y);"]),
        ("CREATE TABLE a (x TEXT DEFAULT 'p;q');", ["CREATE TABLE a (x TEXT DEFAULT 'p;q');"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; DELETE FROM c; END;",
            ["CREATE TRIGGER t AFTER INSERT ON a BEGIN DELETE FROM b; DELETE FROM c; END;"],
        ),
        ("-- a; comment\nCREATE TABLE a (x);", ["-- a; comment\nCREATE TABLE a (x);"]),
        ("CREATE TABLE a (x)", ["CREATE TABLE a (x)"]),
        ("  \n", []),
    ],
)
def test_migration_scripts_split_on_statement_ends_only(script: str, expected: list[str]) -> None:
    assert store_module._split_statements(script) == expected
