"""The names a relay serves, kept in SQLite in its data dir so they survive a restart.

One row per node: its name (`<node-id>.<domain>`) and whether the node activated it
(spec §6). Reads come from memory (every browser connection looks its name up); the few
writes (a node registering) go to the file first, off the event loop, then to memory.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from gate.protocol import NodeId

__all__ = ["NameRegistry", "RegisteredName"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    node_id TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    activated INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class RegisteredName:
    node_id: NodeId
    domain: str
    activated: bool


class NameRegistry:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = threading.Lock()  # writes run in worker threads
        self._names: dict[NodeId, RegisteredName] = {}
        for node_text, domain, activated in db.execute(
            "SELECT node_id, domain, activated FROM names"
        ):
            node_id = NodeId.parse(node_text)
            self._names[node_id] = RegisteredName(node_id, domain, bool(activated))

    @classmethod
    def open(cls, path: Path) -> NameRegistry:
        """Blocking: call through trio.to_thread."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def lookup(self, node_id: NodeId) -> RegisteredName | None:
        return self._names.get(node_id)

    def names(self) -> list[RegisteredName]:
        return list(self._names.values())

    def __len__(self) -> int:
        return len(self._names)

    async def request(self, node_id: NodeId, domain: str) -> None:
        """Record the node's name (activation kept if the name is unchanged)."""
        old = self._names.get(node_id)
        activated = old is not None and old.domain == domain and old.activated
        await self._write(RegisteredName(node_id, domain, activated))

    async def activate(self, node_id: NodeId, domain: str) -> None:
        await self._write(RegisteredName(node_id, domain, True))

    async def _write(self, name: RegisteredName) -> None:
        def write() -> None:
            with self._lock:
                self._db.execute(
                    "INSERT INTO names (node_id, domain, activated, updated_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET"
                    " domain = excluded.domain, activated = excluded.activated,"
                    " updated_at = excluded.updated_at",
                    (str(name.node_id), name.domain, int(name.activated), time.time()),
                )

        await trio.to_thread.run_sync(write)
        self._names[name.node_id] = name
