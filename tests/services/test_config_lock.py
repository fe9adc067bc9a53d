"""Edits of gate.toml from separate processes at once: each is kept (the lock file
beside the config, `gate.config.config_file_locked`), and a lock kept too long by
another process is a clear error that writes nothing.

Real processes: multiprocessing workers and `python -c` children, on a file in tmp_path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import gate.config
from gate.config import config_lock_path, edit_config_file
from gate.errors import ConfigError
from gate.identity import NodeIdentity
from gate.peers_config import add_trusted_peer
from gate.protocol import NodeId

WORKERS = 4
EDITS_EACH = 15


def new_peers(n: int) -> list[str]:
    return [str(NodeId(NodeIdentity.generate().public_key_bytes)) for _ in range(n)]


def trusted(path: Path) -> list[str]:
    return tomllib.loads(path.read_text()).get("p2p", {}).get("trusted_peers", [])


def _add_peers(path: str, peers: list[str], start: Any) -> None:
    """A worker: wait for the others, then trust each peer, one edit each."""
    if not start.wait(60):
        raise SystemExit("never started")
    for peer in peers:
        add_trusted_peer(Path(path), peer)


def test_edits_from_separate_processes_at_once_are_all_kept(tmp_path):
    path = tmp_path / "gate.toml"
    path.write_text("# my peers\n[p2p]\ntrusted_peers = []\n")
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as CLI runs are
    start = context.Event()
    batches = [new_peers(EDITS_EACH) for _ in range(WORKERS)]
    workers = [
        context.Process(target=_add_peers, args=(str(path), batch, start)) for batch in batches
    ]
    for worker in workers:
        worker.start()
    try:
        start.set()
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(10)
    assert sorted(trusted(path)) == sorted(peer for batch in batches for peer in batch)
    assert path.read_text().startswith("# my peers\n")  # edited in place
    lock = config_lock_path(path)
    assert lock.name == ".gate.toml.lock" and lock.stat().st_mode & 0o777 == 0o600


HOLD_LOCK = """\
import os, sys
from pathlib import Path
from gate.config import config_file_locked
with config_file_locked(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes it
"""


@contextlib.contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[Callable[[], None]]:
    """Another process holds the config's edit lock until the function yielded is
    called (or the block ends)."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        stdin = holder.stdin

        def release() -> None:
            stdin.close()
            assert holder.wait(30) == 0

        try:
            assert holder.stdout.readline() == "locked\n"
            yield release
        finally:
            if holder.poll() is None:
                holder.kill()


def test_an_edit_waits_for_another_process_and_then_is_made(tmp_path):
    path = tmp_path / "gate.toml"
    peer = new_peers(1)[0]
    with (
        lock_held_elsewhere(path) as release,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        edit = pool.submit(add_trusted_peer, path, peer)
        time.sleep(0.5)
        assert not edit.done()  # it waits for the lock...
        assert not path.exists()
        release()
        edit.result(timeout=30)  # ...and edits once it is free
    assert trusted(path) == [peer]


def test_a_lock_kept_too_long_is_a_clear_error_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(gate.config, "EDIT_LOCK_PATIENCE", 0.3)
    path = tmp_path / "gate.toml"
    path.write_text("[server]\nlog_level = 'info'\n")
    with lock_held_elsewhere(path) as release, pytest.raises(ConfigError) as info:
        try:
            edit_config_file(path, lambda data: data["server"].update(log_level="debug"), env={})
        finally:
            release()
    assert str(info.value) == (
        f"{path}: another gate process is editing this file (it holds "
        f"{tmp_path / '.gate.toml.lock'}); gave up after 0.3 s, nothing written"
    )
    assert path.read_text() == "[server]\nlog_level = 'info'\n"
    # The lock is gone with its holder: the next edit goes through.
    edit_config_file(path, lambda data: data["server"].update(log_level="debug"), env={})
    assert "debug" in path.read_text()
