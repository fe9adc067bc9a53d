"""Advisory locks between processes: an `flock` on a lock file, waited for a bounded time.

The kernel ties an flock to the open file and drops it when the process ends, however it
ends (even `kill -9`), so a lock is never stale. A lock file is never deleted: a process
could otherwise lock the old file while another creates and locks a new one of the same
name. Two descriptors opened separately conflict even within one process, so a process
serializes its own threads before it locks.

Users: `gate.daemon_lock` (one daemon per data dir) and `gate.config` (one edit of
gate.toml at a time, whichever process makes it).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Final

__all__ = ["lock", "open_lock_file"]

_RETRY: Final = 0.02  # seconds between attempts: holders keep their lock for milliseconds


def open_lock_file(path: Path) -> int:
    """A descriptor on the lock file at `path`, created 0600 if need be. Closing it
    releases the lock; it is not inherited by children and is closed by exec. OSError
    when the file cannot be opened."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def lock(fd: int, *, patience: float, shared: bool = False) -> bool:
    """Lock `fd` (exclusive, or `shared`), retrying for up to `patience` seconds; False
    when another process still holds it by then (0: one attempt)."""
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, operation)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RETRY)
