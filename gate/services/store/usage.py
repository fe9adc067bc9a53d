"""Usage records: one per request, written to ``gate.db`` (and optionally JSON lines) off
the request path.

Theory of operation
-------------------
The request path calls `UsageRecorder.record`, which is sync and O(1): it puts the
record into a bounded trio memory channel with ``send_nowait`` and returns. It never
blocks and never raises. When the channel is full (the writer has fallen far behind,
say the disk stalled), the record is dropped and counted, and a warning is logged at
most once per `DROP_WARNING_INTERVAL` seconds: bounded memory beats unbounded growth,
and the loss is visible in `UsageRecorder.statistics` (and so in the metrics).

`UsageRecorder.run` is the writer, a service for the supervisor. It waits for one
record, takes whatever else is already queued (up to ``batch_size``) and writes the
batch with one ``executemany``, i.e. one transaction: under load, batches grow while the
previous one is being written, so the cost per record falls as the rate rises. With a
``jsonl_path`` the same batch is appended to that file as JSON lines, in a worker
thread.

When the service's ``shutdown`` event is set, only the *wait* for the next record is
cancelled, never a write: the writer then drains the channel to empty, writes it and
returns, so nothing `record` accepted before the shutdown is lost. Start it before, and
stop it after, every service that records (``after=("usage",)`` on those).

A store error is logged and the batch retried once; a second failure drops the batch
(counted in ``dropped`` and logged). Usage accounting never takes the node down.

The ``endpoint`` column is added by schema migration 2, ``tokens_source`` by 3, ``door``
by 4.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from gate.errors import StoreError
from gate.nursery import ServiceContext
from gate.services.store.database import Store

__all__ = [
    "DROP_WARNING_INTERVAL",
    "UsageRecord",
    "UsageRecorder",
    "query_usage",
]

DROP_WARNING_INTERVAL: Final = 10.0  # seconds between two "dropped" warnings, at least
MAX_QUERY_LIMIT: Final = 10_000

_log = logging.getLogger("gate.usage")


class UsageRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One request, as recorded. Times are seconds since the epoch, durations ms.

    Field order is the column order of the ``usage`` table (see `_INSERT`); the JSON lines
    carry the same names.
    """

    ts: float
    client: str
    model: str
    provider: str | None
    peer: str | None
    status: int
    latency_ms: float
    ttft_ms: float | None
    tokens_in: int | None
    tokens_out: int | None
    error: str | None
    endpoint: str
    # Where the token counts come from: "engine" (its usage report), "counted" (Gate,
    # with the engine's tokenizer or one per streamed token), "estimate" (UTF-8 bytes / 4).
    tokens_source: str | None = None
    # The door it came through: "local" (the HTTP listener), "peer" (a trusted peer's
    # stream), "relay" (a browser's TLS through a relay) or "tls" (the node's own TLS
    # port, `tls.listen`); None in rows from before.
    door: str | None = None


_COLUMNS: Final = UsageRecord.__struct_fields__
_INSERT: Final = (
    f"INSERT INTO usage ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM usage"
_json = msgspec.json.Encoder()


class UsageRecorder:
    """The queue between the request path (`record`) and the writer service (`run`).

    One recorder per node; the writer may be restarted, the queue survives it.
    """

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        linger: float = 0.05,
        logger: logging.Logger | None = None,
    ) -> None:
        if capacity < 1 or batch_size < 1 or linger < 0:
            raise ValueError("capacity and batch_size must be at least 1, linger >= 0")
        self.capacity = capacity
        self.batch_size = batch_size
        self.linger = linger  # seconds a first record waits for others to share its write
        self._log = logger if logger is not None else _log
        self._send, self._receive = trio.open_memory_channel[UsageRecord](capacity)
        self._written = 0
        self._dropped_full = 0
        self._dropped_failed = 0
        self._store_errors = 0
        self._jsonl_errors = 0
        self._last_drop_warning = -DROP_WARNING_INTERVAL
        self._drops_since_warning = 0

    # --- the request path ---

    def record(self, rec: UsageRecord) -> None:
        """Queue ``rec`` for writing. Sync, O(1), never blocks, never raises."""
        try:
            self._send.send_nowait(rec)
        except trio.WouldBlock:
            self._dropped_full += 1
            self._drops_since_warning += 1
            now = time.monotonic()
            if now - self._last_drop_warning >= DROP_WARNING_INTERVAL:
                self._last_drop_warning = now
                self._log.warning(
                    "usage queue full (%d records): dropped %d record(s) since the last"
                    " warning, %d in all; is the database stalled?",
                    self.capacity,
                    self._drops_since_warning,
                    self._dropped_full + self._dropped_failed,
                )
                self._drops_since_warning = 0

    def statistics(self) -> dict[str, int]:
        """``queued`` now; ``written``, ``dropped`` (full queue + failed writes) so far."""
        return {
            "queued": self._send.statistics().current_buffer_used,
            "written": self._written,
            "dropped": self._dropped_full + self._dropped_failed,
            "dropped_queue_full": self._dropped_full,
            "dropped_store_error": self._dropped_failed,
            "store_errors": self._store_errors,
            "jsonl_errors": self._jsonl_errors,
        }

    @property
    def dropped(self) -> int:
        """Records lost for any reason so far; for the ``gate_usage_dropped_total`` metric."""
        return self._dropped_full + self._dropped_failed

    # --- the writer service ---

    async def run(
        self,
        ctx: ServiceContext,
        store: Store,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        jsonl_path: Path | None = None,
    ) -> None:
        """Write queued records until ``ctx.shutdown``, then drain the queue and return."""
        wait_scope: trio.CancelScope | None = None

        async def watch_shutdown() -> None:
            await ctx.shutdown.wait()
            if wait_scope is not None:
                wait_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_shutdown)
            task_status.started()
            while not ctx.shutdown.is_set():
                batch: list[UsageRecord] | None = None
                with trio.CancelScope() as wait_scope:
                    batch = [await self._receive.receive()]
                    # Let a burst gather: one transaction (and one thread hand-off) for
                    # many requests instead of one each. Shutdown cuts the wait short.
                    await trio.sleep(self.linger)
                wait_scope = None  # from here on, shutdown must not cancel the write
                if batch is not None:
                    await self._write(store, self._take(batch), jsonl_path)
            # Drain: everything record() accepted, including records that arrive while
            # this writes (the loop ends only on an empty queue).
            while batch := self._take([]):
                await self._write(store, batch, jsonl_path)
            nursery.cancel_scope.cancel()

    def _take(self, batch: list[UsageRecord]) -> list[UsageRecord]:
        """Fill ``batch`` up to ``batch_size`` with what is queued now, without waiting."""
        receive_nowait = self._receive.receive_nowait
        try:
            while len(batch) < self.batch_size:
                batch.append(receive_nowait())
        except trio.WouldBlock:
            pass
        return batch

    async def _write(self, store: Store, batch: list[UsageRecord], jsonl_path: Path | None) -> None:
        rows = [msgspec.structs.astuple(rec) for rec in batch]
        for attempt in (1, 2):
            try:
                await store.executemany(_INSERT, rows)
            except StoreError as exc:
                self._store_errors += 1
                if attempt == 1:
                    self._log.warning(
                        "writing %d usage record(s) failed, retrying once: %s", len(rows), exc
                    )
                    continue
                self._dropped_failed += len(rows)
                self._log.error(
                    "writing %d usage record(s) failed again; dropped them (%d dropped in all): %s",
                    len(rows),
                    self.dropped,
                    exc,
                )
            else:
                self._written += len(rows)
            break
        if jsonl_path is not None:
            try:
                await trio.to_thread.run_sync(_append_jsonl, jsonl_path, batch)
            except OSError as exc:
                self._jsonl_errors += 1
                self._log.error(
                    "appending %d usage record(s) to %s failed: %s", len(batch), jsonl_path, exc
                )


def _append_jsonl(path: Path, batch: list[UsageRecord]) -> None:
    """Worker thread: append one JSON object per line. The file is private (0600)."""
    data = _json.encode_lines(batch)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "ab") as f:
        f.write(data)
        f.flush()


async def query_usage(
    store: Store,
    *,
    limit: int = 100,
    offset: int = 0,
    model: str | None = None,
    client: str | None = None,
    since: float | None = None,
    door: str | None = None,
) -> list[UsageRecord]:
    """Records, newest first, ``limit`` from ``offset``; filtered by exact ``model``,
    ``client`` and ``door``, and by ``ts >= since`` (seconds since the epoch)."""
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_QUERY_LIMIT}, got {limit!r}")
    if offset < 0:
        raise ValueError(f"offset must not be negative, got {offset!r}")
    where: list[str] = []
    params: list[object] = []
    if model is not None:
        where.append("model = ?")
        params.append(model)
    if client is not None:
        where.append("client = ?")
        params.append(client)
    if door is not None:
        where.append("door = ?")
        params.append(door)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    sql = _SELECT
    if where:
        sql += " WHERE " + " AND ".join(where)
    # id breaks ties between equal timestamps; (ts, rowid) is the order of index usage_ts.
    sql += " ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?"
    params += [limit, offset]
    return [_from_row(row) for row in await store.fetchall(sql, params)]


def _from_row(row: tuple[Any, ...]) -> UsageRecord:
    # The schema allows NULL where the record does not (rows written by other code, or
    # before migration 2 added endpoint): those read as empty values.
    (
        ts,
        client,
        model,
        provider,
        peer,
        status,
        latency,
        ttft,
        t_in,
        t_out,
        error,
        endpoint,
        source,
        door,
    ) = row
    return UsageRecord(
        ts=float(ts),
        client=client or "",
        model=model or "",
        provider=provider,
        peer=peer,
        status=status or 0,
        latency_ms=latency or 0.0,
        ttft_ms=ttft,
        tokens_in=t_in,
        tokens_out=t_out,
        error=error,
        endpoint=endpoint or "",
        tokens_source=source,
        door=door,
    )
