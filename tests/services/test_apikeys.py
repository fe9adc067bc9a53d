"""API keys against a real gate.db: create, verify, revoke, list, and what is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from gate.errors import GateError, StoreError
from gate.services.store.apikeys import KEY_PREFIX, ApiKeyInfo, ApiKeys, InvalidKeyName, extract_key
from gate.services.store.database import Store, open_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    with trio.fail_after(10):
        async with open_store(tmp_path / "gate.db") as db:
            yield db


async def test_create_returns_the_key_once_and_verify_finds_it(store: Store) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        assert not keys.any_active
        key, info = await keys.create("  laptop  ")
    assert re.fullmatch(r"gk_[A-Za-z0-9_-]{43}", key)
    assert re.fullmatch(r"key_[0-9a-f]{8}", info.id)
    assert info.name == "laptop" and info.revoked_at is None
    assert keys.any_active
    assert keys.verify(key) == info


async def test_keys_are_distinct(store: Store) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        made = [await keys.create(f"k{i}") for i in range(20)]
    assert len({key for key, _ in made}) == len({info.id for _, info in made}) == 20
    for key, info in made:
        assert keys.verify(key) == info


async def test_wrong_and_garbage_keys_are_refused(store: Store) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        key, _ = await keys.create("k")
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    refused = [
        "",
        KEY_PREFIX,
        flipped,
        KEY_PREFIX + secrets.token_urlsafe(32),  # well-formed, never issued
        key + "x",
        key[:-1],
        " " + key[1:],
        key.upper(),
        key[:-1] + "é",  # same length, not ASCII
        "gk_" + "\x00" * 43,
        "x" * 1_000_000,
        hashlib.sha256(key.encode()).hexdigest(),  # the stored hash is not a key
    ]
    for presented in refused:
        assert keys.verify(presented) is None, presented


async def test_revoke_takes_effect_at_once_and_persists(store: Store) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        key, info = await keys.create("k")
        other_key, other = await keys.create("other")
        assert await keys.revoke(info.id) is True
        assert keys.verify(key) is None
        assert keys.verify(other_key) == other
        assert await keys.revoke(info.id) is False  # already revoked
        assert await keys.revoke("key_nothere") is False
        listed = {i.id: i for i in await keys.list()}
        reloaded = await ApiKeys.load(store)
    revoked_at = listed[info.id].revoked_at
    assert revoked_at is not None and revoked_at >= info.created_at
    assert listed[other.id] == other
    assert reloaded.verify(key) is None
    assert reloaded.verify(other_key) == other


async def test_revoking_the_last_key_leaves_none_active(store: Store) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        _, info = await keys.create("only")
        await keys.revoke(info.id)
    assert not keys.any_active


async def test_a_failed_revoke_still_refuses_the_key(tmp_path: Path) -> None:
    """Fail closed: the key is out of memory before the write that fails."""
    db = await Store.open(tmp_path / "gate.db")
    with trio.fail_after(10):
        keys = await ApiKeys.load(db)
        key, info = await keys.create("k")
        await db.close()
        with pytest.raises(StoreError):
            await keys.revoke(info.id)
    assert keys.verify(key) is None


async def test_list_shows_everything_but_secrets(store: Store) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        made = [await keys.create(name) for name in ("a", "b", "c")]
        await keys.revoke(made[1][1].id)
        listed = await keys.list()
    assert [i.name for i in listed] == ["a", "b", "c"]
    assert all(isinstance(i, ApiKeyInfo) for i in listed)
    assert [i.revoked_at is not None for i in listed] == [False, True, False]
    assert set(ApiKeyInfo.__struct_fields__) == {"id", "name", "created_at", "revoked_at"}
    for key, _ in made:
        assert key not in repr(listed)


async def test_the_database_holds_the_hash_never_the_key(store: Store, tmp_path: Path) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        key, info = await keys.create("k")
    conn = sqlite3.connect(tmp_path / "gate.db")
    try:
        rows = conn.execute(
            "SELECT id, name, hash, created_at, revoked_at FROM api_keys"
        ).fetchall()
    finally:
        conn.close()
    assert rows == [(info.id, "k", hashlib.sha256(key.encode()).hexdigest(), info.created_at, None)]
    secret = key[len(KEY_PREFIX) :].encode()
    contents = read_database_files(tmp_path)
    assert contents
    for name, data in contents.items():
        assert secret not in data, name


def read_database_files(directory: Path) -> dict[str, bytes]:
    """The database, its WAL and its shared memory, as bytes."""
    return {path.name: path.read_bytes() for path in directory.glob("gate.db*")}


async def test_reload_picks_up_changes_from_another_process(store: Store) -> None:
    with trio.fail_after(10):
        node = await ApiKeys.load(store)
        cli = await ApiKeys.load(store)  # e.g. `gate keys create` while the node runs
        key, info = await cli.create("from the cli")
        assert node.verify(key) is None
        await node.reload()
        assert node.verify(key) == info
        await cli.revoke(info.id)
        await node.reload()
        assert node.verify(key) is None


async def test_a_reload_cannot_bring_back_a_key_this_object_revoked(store: Store) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        key, info = await keys.create("k")
        await keys.revoke(info.id)
        # As if the reload had read the table before the revoke was written.
        await store.execute("UPDATE api_keys SET revoked_at = NULL WHERE id = ?", (info.id,))
        await keys.reload()
    assert keys.verify(key) is None


async def test_rows_with_a_foreign_hash_are_ignored(store: Store) -> None:
    with trio.fail_after(10):
        await store.execute(
            "INSERT INTO api_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)",
            ("key_bad", "bad", "not hex at all", 1.0),
        )
        keys = await ApiKeys.load(store)
    assert not keys.any_active


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there", "line\nbreak"])
async def test_names_are_checked(store: Store, name: str) -> None:
    with trio.fail_after(10):
        keys = await ApiKeys.load(store)
        with pytest.raises(InvalidKeyName) as caught:
            await keys.create(name)
    assert isinstance(caught.value, GateError) and isinstance(caught.value, ValueError)


KEY = "gk_" + "a" * 43


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer " + KEY.encode())], KEY),
        ([(b"authorization", b"bearer " + KEY.encode())], KEY),
        ([(b"authorization", b"BEARER   " + KEY.encode() + b"  ")], KEY),
        ([(b"x-api-key", KEY.encode())], KEY),
        ([(b"x-api-key", b" " + KEY.encode() + b" ")], KEY),
        ([(b"authorization", b"Bearer A"), (b"x-api-key", b"B")], "A"),  # bearer first
        ([(b"x-api-key", b"B"), (b"authorization", b"Bearer A")], "A"),
        ([(b"x-api-key", b"B"), (b"x-api-key", b"C")], "B"),  # the first one
        ([(b"authorization", b"Basic dXNlcjpwYXNz"), (b"x-api-key", b"B")], "B"),
        ([(b"authorization", b"Bearer "), (b"x-api-key", b"B")], "B"),
        ([(b"authorization", b"Basic dXNlcjpwYXNz")], None),
        ([(b"authorization", b"Bearer")], None),
        ([(b"authorization", KEY.encode())], None),  # no scheme
        ([(b"authorization", b"Bearer \xff\xfe")], None),  # not ASCII
        ([(b"x-api-key", b"")], None),
        ([(b"content-type", b"application/json")], None),
        ([], None),
    ],
)
def test_extract_key(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert extract_key(headers) == expected


class _ReadsLate:
    """A store whose reads give what they read only once `release` is set: a reload that
    read the table just before a create finishes after it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.read, self.release = trio.Event(), trio.Event()

    async def fetchall(self, *args: object) -> list[tuple[object, ...]]:
        rows = await self._store.fetchall(*args)  # type: ignore[arg-type]
        self.read.set()
        await self.release.wait()
        return rows

    async def execute(self, *args: object) -> int:
        return await self._store.execute(*args)  # type: ignore[arg-type]


async def test_a_reload_that_read_before_a_create_keeps_the_new_key(store: Store) -> None:
    slow = _ReadsLate(store)
    keys = ApiKeys(slow)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keys.reload)
            await slow.read.wait()
            key, info = await keys.create("made during a reload")
            slow.release.set()
        assert keys.verify(key) == info  # acknowledged: it must work at once
        revoked, revoked_info = await keys.create("revoked during a reload")
        slow.read, slow.release = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keys.reload)
            await slow.read.wait()
            await keys.revoke(revoked_info.id)
            slow.release.set()
        assert keys.verify(revoked) is None and keys.verify(key) == info
