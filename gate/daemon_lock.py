"""One daemon per data dir: the lock on `<data dir>/gate.lock`, and who holds it.

A data dir is one node (its key, gate.db, logs), so two daemons on it would be two
processes claiming one identity and writing one database. `gate serve` therefore takes
an exclusive `flock` on gate.lock before it reads the key, and keeps it for its life.
The kernel drops the lock when the process ends, however it ends (even `kill -9`), so
a lock is never stale: the file's text alone proves nothing, the lock does.

The holder writes what others need into the file: its pid at once, and where its API
listens and its node id once it is ready. The CLI reads them (`lock_holder`) to find
the daemon that owns a data dir wherever it listens now: `server.bind` may have changed
since it started. A reader takes a shared lock for an instant to learn whether anyone
holds the file; a daemon starting in that instant retries for a moment before it
concludes that another one runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gate.errors import GateError
from gate.file_lock import lock, open_lock_file

__all__ = ["LOCK_FILENAME", "DataDirLock", "DataDirLocked", "LockHolder", "lock_holder"]

LOCK_FILENAME: Final = "gate.lock"
_ACQUIRE_PATIENCE: Final = 1.0  # seconds: a reader holds its shared lock for microseconds


@dataclass(frozen=True)
class LockHolder:
    """The daemon that holds a data dir's lock; `url` and `node_id` are "" until it is
    ready (it writes them once its API listens)."""

    pid: int
    url: str = ""
    node_id: str = ""

    def describe(self) -> str:
        return f"pid {self.pid}" + (f", {self.url}" if self.url else ", starting")


class DataDirLocked(GateError):
    """Another process holds the data dir's lock."""

    def __init__(self, data_dir: Path, holder: LockHolder) -> None:
        super().__init__(
            f"another Gate daemon ({holder.describe()}) already runs on the data dir {data_dir}"
        )
        self.data_dir, self.holder = data_dir, holder


class DataDirLock:
    """The exclusive lock on a data dir, held by the daemon until `release` or its end."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd, self.path = fd, path

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Take the lock (creating the data dir and the file as needed) and write our
        pid into it. DataDirLocked when another process holds it; OSError when the data
        dir cannot be used."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / LOCK_FILENAME
        # Closed by exec: `node_restart` re-executes `gate serve`, which takes it again.
        fd = open_lock_file(path)
        try:
            if not lock(fd, patience=_ACQUIRE_PATIENCE):
                raise DataDirLocked(data_dir, _read(fd))
        except BaseException:
            os.close(fd)
            raise
        held = cls(fd, path)
        held.write(LockHolder(pid=os.getpid()))
        return held

    def write(self, holder: LockHolder) -> None:
        """Say who holds the lock (readers see the old text or the new: it is short)."""
        data = json.dumps(
            {"pid": holder.pid, "url": holder.url, "node_id": holder.node_id}
        ).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def ready(self, url: str, node_id: str) -> None:
        """The daemon listens: record where, and which node it is."""
        self.write(LockHolder(pid=os.getpid(), url=url, node_id=node_id))

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = -1


def lock_holder(data_dir: Path) -> LockHolder | None:
    """The daemon holding `data_dir`'s lock, or None when no process holds it (a file
    left by a daemon that ended says nothing)."""
    try:
        fd = os.open(data_dir / LOCK_FILENAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not lock(fd, patience=0, shared=True):
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> LockHolder:
    """What the holder wrote; a file caught between its truncation and its write is
    read again a moment later, and a holder that says nothing is pid 0."""
    for attempt in range(3):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(os.pread(fd, 4096, 0))
            return LockHolder(
                pid=int(data["pid"]), url=str(data["url"]), node_id=str(data["node_id"])
            )
        if attempt < 2:
            time.sleep(0.02)
    return LockHolder(pid=0)
