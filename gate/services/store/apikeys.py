"""API keys: created once, stored hashed in ``gate.db``, verified in O(1) on each request.

Theory of operation
-------------------
A key is ``gk_`` followed by ``secrets.token_urlsafe(32)``: 32 random bytes (256 bits)
as 43 base64url characters, 46 characters in all. The prefix lets people and secret
scanners recognise a Gate key. The plaintext is returned once, by `ApiKeys.create`, and
never stored: the database keeps the hex SHA-256 of the whole key, next to a public id
(``key_`` + 8 hex digits, for listing and revoking) and a name.

Why SHA-256 and not bcrypt/argon2: those slow hashes protect *low-entropy* secrets
(passwords) against guessing after a database leak. A 256-bit random key cannot be
guessed, so a slow hash adds no protection, while it would cost tens of milliseconds of
CPU on every request (the latency budget is 1 ms) and make each bad guess an easy way
to burn that CPU.

Verifying: hash the presented key, look the digest up in a dict of the active keys,
then compare the digests with `hmac.compare_digest`. The lookup's timing depends only on
the SHA-256 of what the client sent, which tells the client nothing about a stored key,
and the comparison is constant-time with respect to the stored value.

The active keys are held in memory (`ApiKeys.load`), so `ApiKeys.verify` does no IO.
`ApiKeys.revoke` removes a key from memory before it writes the database, so the key is
refused from that moment on, even if the write then fails (which raises). Keys created
or revoked by another process (the CLI) reach a running node on `ApiKeys.reload`; a reload
never undoes a create or a revoke this object made while it read the table.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import time
from typing import Final

import msgspec

from gate.errors import GateError
from gate.services.store.database import Store

__all__ = [
    "KEY_PREFIX",
    "MAX_NAME_LENGTH",
    "ApiKeyInfo",
    "ApiKeys",
    "InvalidKeyName",
    "extract_key",
]

KEY_PREFIX: Final = "gk_"
_KEY_BYTES: Final = 32
_KEY_LENGTH: Final = len(KEY_PREFIX) + 43  # 32 bytes are 43 base64url characters, unpadded
_ID_PREFIX: Final = "key_"
MAX_NAME_LENGTH: Final = 100


class InvalidKeyName(GateError, ValueError):
    """A key name that is empty, too long or not printable (the message says which)."""


class ApiKeyInfo(msgspec.Struct, frozen=True):
    """What may be shown about a key: never the key, nor its hash."""

    id: str
    name: str
    created_at: float  # seconds since the epoch
    revoked_at: float | None = None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("ascii")).digest()


class ApiKeys:
    """The node's API keys. Build with `load`; only this object writes the table."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._active: dict[bytes, ApiKeyInfo] = {}  # sha256 digest -> key
        self._ids: dict[str, bytes] = {}  # id -> digest, for the active keys
        # Ids this object revoked: a reload that read the table just before the revoke
        # was written must not bring them back.
        self._revoked: set[str] = set()
        # Keys this object created, numbered, until a reload that began after them ends: a
        # reload that read the table just before a create must not drop the new key.
        self._creates = 0
        self._recent: dict[bytes, tuple[int, ApiKeyInfo]] = {}

    @classmethod
    async def load(cls, store: Store) -> ApiKeys:
        keys = cls(store)
        await keys.reload()
        return keys

    async def reload(self) -> None:
        """Re-read the active keys from the database (after another process changed it)."""
        began = self._creates
        rows = await self._store.fetchall(
            "SELECT id, name, hash, created_at FROM api_keys WHERE revoked_at IS NULL"
        )
        active: dict[bytes, ApiKeyInfo] = {}
        ids: dict[str, bytes] = {}
        for key_id, name, hex_hash, created_at in rows:
            if key_id in self._revoked:
                continue
            try:
                digest = bytes.fromhex(hex_hash)
            except (TypeError, ValueError):
                continue  # not a hash we wrote: it can match no key
            active[digest] = ApiKeyInfo(key_id, name, created_at)
            ids[key_id] = digest
        for digest, (number, info) in list(self._recent.items()):
            if number <= began:  # created before the read: in the rows unless revoked
                del self._recent[digest]
            elif info.id not in self._revoked:
                active[digest], ids[info.id] = info, digest
        self._active, self._ids = active, ids

    @property
    def any_active(self) -> bool:
        """Whether any key is active (a node with none may choose to allow everyone)."""
        return bool(self._active)

    def verify(self, presented: str) -> ApiKeyInfo | None:
        """The active key ``presented`` is, or None. Sync, O(1), no IO."""
        if len(presented) != _KEY_LENGTH or not presented.isascii():
            return None  # the length of a key is public: nothing leaks by checking it
        digest = _digest(presented)
        info = self._active.get(digest)
        if info is None:
            return None
        # The dict matched on equal digests already; compare once more in constant time
        # against the stored value, so that no early-exit comparison is all that stands.
        if not hmac.compare_digest(digest, self._ids[info.id]):
            return None  # pragma: no cover - equal dict keys are equal digests
        return info

    async def create(self, name: str) -> tuple[str, ApiKeyInfo]:
        """Create a key named ``name``; return its plaintext (shown once, then gone) and info."""
        name = name.strip()
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise InvalidKeyName(
                f"a key name must be 1 to {MAX_NAME_LENGTH} printable characters, got {name!r}"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
        digest = _digest(key)
        key_id = _ID_PREFIX + secrets.token_hex(4)
        info = ApiKeyInfo(key_id, name, time.time())
        # A clash of ids (1 in 2**32 per pair) fails the PRIMARY KEY: a StoreError, not a
        # silent overwrite.
        await self._store.execute(
            "INSERT INTO api_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)",
            (key_id, name, digest.hex(), info.created_at),
        )
        self._active[digest] = info
        self._ids[key_id] = digest
        self._creates += 1
        self._recent[digest] = (self._creates, info)
        return key, info

    async def revoke(self, key_id: str) -> bool:
        """Revoke a key by id: True if an active key was revoked, False if none was."""
        self._revoked.add(key_id)
        digest = self._ids.pop(key_id, None)
        if digest is not None:
            del self._active[digest]  # refused from now on, before any await
        changed = await self._store.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return changed > 0

    async def list(self) -> builtins.list[ApiKeyInfo]:
        """Every key, revoked ones too, oldest first."""
        rows = await self._store.fetchall(
            "SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at, id"
        )
        return [ApiKeyInfo(*row) for row in rows]

    def __repr__(self) -> str:
        return f"<ApiKeys {len(self._active)} active>"


def extract_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents: ``authorization: Bearer <key>`` (the scheme in any case)
    or else ``x-api-key: <key>``. Header names are lowercase (ASGI). None if neither."""
    api_key: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and (key := _token(token)) is not None:
                return key
        elif name == b"x-api-key" and api_key is None:
            api_key = value
    return None if api_key is None else _token(api_key)


def _token(value: bytes) -> str | None:
    value = value.strip()
    if not value or not value.isascii():
        return None
    return value.decode("ascii")
