"""The node's SQLite database (``gate.db``): usage records and API keys.

Theory of operation
-------------------
sqlite3 blocks, and Gate runs on trio, so every call into the connection runs in
``trio.to_thread.run_sync`` -- never in a thread of our own. One ``trio.Lock`` guards the
one connection: only one worker thread touches it at a time (hence
``check_same_thread=False`` is safe), and a cancelled caller cannot let a second
statement in while the first is still running, because ``to_thread.run_sync`` is not
abandoned on cancel: the lock is released only once the thread is done.

Durability: the database is in WAL mode with ``synchronous=NORMAL``; every write runs in
an explicit ``BEGIN IMMEDIATE ... COMMIT`` (the connection has ``isolation_level=None``,
so sqlite3 starts no transactions of its own). A crash loses at most the last commits,
never leaves half a transaction, and never corrupts the file.

Schema: ``MIGRATIONS[i]`` brings the schema from version ``i`` to ``i + 1``; the version
is ``PRAGMA user_version``. Each migration runs in its own transaction together with the
version bump, re-reading the version once it holds the write lock, so a crash (or a
failing script) leaves the previous version and no partial schema, and two processes
opening the same file at once do not apply a migration twice. A file whose version is
newer than this code knows is refused before anything is written to it.

``sqlite3.Error`` and ``OSError`` become :class:`~gate.errors.StoreError` naming the
path, here at the boundary.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from gate.errors import StoreError

__all__ = ["MIGRATIONS", "Params", "Store", "open_store"]

T = TypeVar("T")

Params = Sequence[Any] | Mapping[str, Any]

MIGRATIONS: tuple[str, ...] = (
    # 1: usage records and API keys.
    """
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        client TEXT,
        model TEXT,
        provider TEXT,
        peer TEXT,
        status INTEGER,
        latency_ms REAL,
        ttft_ms REAL,
        tokens_in INTEGER,
        tokens_out INTEGER,
        error TEXT
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 2: which API endpoint each request used (chat.completions, messages, ...).
    """
    ALTER TABLE usage ADD COLUMN endpoint TEXT;
    """,
    # 3: how tokens_in/tokens_out were obtained: engine, counted or estimate.
    """
    ALTER TABLE usage ADD COLUMN tokens_source TEXT;
    """,
    # 4: the door each request came through: local, peer, relay or tls.
    """
    ALTER TABLE usage ADD COLUMN door TEXT;
    """,
)


class Store:
    """One connection to ``gate.db``. Open with :meth:`open` or :func:`open_store`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, schema_version: int) -> None:
        self._conn = conn
        self._path = path
        self._schema_version = schema_version
        self._lock = trio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        Prefer :func:`open_store`, which also guarantees the close.
        """
        # Connect, configure and migrate in one worker call: if we are cancelled meanwhile,
        # run_sync still returns the connection, so it cannot be lost between two calls.
        conn, version = await trio.to_thread.run_sync(_open_sync, path)
        return cls(conn, path, version)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def schema_version(self) -> int:
        return self._schema_version

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the connection (idempotent). Waits for a statement in flight to finish."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await trio.to_thread.run_sync(self._conn.close)

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement in its own transaction; return the number of rows changed."""

        def run(conn: sqlite3.Connection) -> int:
            return _in_transaction(conn, lambda: conn.execute(sql, params).rowcount)

        return await self._run(run)

    async def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> int:
        """Run a statement for each params, all in one transaction; return rows changed."""
        rows = list(seq_of_params)  # consume the iterable here, not in the worker thread

        def run(conn: sqlite3.Connection) -> int:
            return _in_transaction(conn, lambda: conn.executemany(sql, rows).rowcount)

        return await self._run(run)

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run a query and return every row. One statement reads one consistent snapshot."""

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, params).fetchall()

        return await self._run(run)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            if self._closed:
                raise StoreError(f"database {self._path} is closed")
            try:
                return await trio.to_thread.run_sync(fn, self._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"database {self._path}: {exc}") from exc

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"version {self._schema_version}"
        return f"<Store {self._path} ({state})>"


@asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[Store]:
    """``async with open_store(path) as store:`` -- closed on exit, even when cancelled."""
    store = await Store.open(path)
    try:
        yield store
    finally:
        # Shielded: a cancelled scope must still close, or the connection leaks.
        with trio.CancelScope(shield=True):
            await store.close()


# --- worker-thread side: everything below runs inside trio.to_thread.run_sync ---


def _open_sync(path: Path) -> tuple[sqlite3.Connection, int]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        # Check the version before anything writes: a newer Gate's file stays untouched.
        # This first read is also where "file is not a database" surfaces.
        _check_version(conn, path, _user_version(conn))
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(
                f"cannot open database {path}: WAL journaling unavailable (got {mode!r});"
                " is the data dir on a network filesystem?"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        version = _migrate(conn, path)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        raise
    return conn, version


def _migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Apply pending migrations, one transaction each; return the final version."""
    while True:
        conn.execute("BEGIN IMMEDIATE")  # the write lock, before re-reading the version
        try:
            version = _user_version(conn)
            _check_version(conn, path, version)
            if version == len(MIGRATIONS):
                conn.execute("COMMIT")
                return version
            try:
                for statement in _split_statements(MIGRATIONS[version]):
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise StoreError(
                    f"cannot migrate database {path} to version {version + 1}: {exc}"
                ) from exc
            # Not a parameter: PRAGMA takes none. An int from our own counter is safe.
            conn.execute(f"PRAGMA user_version = {version + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _check_version(conn: sqlite3.Connection, path: Path, version: int) -> None:
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database {path} has schema version {version}, but this Gate knows up to"
            f" {len(MIGRATIONS)}: it was created by a newer Gate; upgrade Gate"
        )


def _user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _split_statements(script: str) -> list[str]:
    """Split a script into statements, using SQLite's own tokenizer to find the ends.

    ``executescript`` would be simpler, but it COMMITs any open transaction first, and a
    migration must run inside the transaction that also bumps ``user_version``.
    """
    statements: list[str] = []
    pending = ""
    *terminated, tail = script.split(";")
    for piece in terminated:
        pending += piece + ";"
        # complete_statement is False while the ";" is inside a string, a comment or a
        # trigger body, so those keep accumulating.
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    pending += tail
    if pending.strip():  # no final ";": SQLite runs it, or says what is wrong with it
        statements.append(pending.strip())
    return statements
