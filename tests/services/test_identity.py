"""Node identity: created once, loaded as is, never silently replaced."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import iroh
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gate.errors import IdentityError
from gate.identity import (
    KEY_FILENAME,
    NodeIdentity,
    export_identity,
    import_identity,
    load_identity,
    load_or_create_identity,
    write_secret_file_atomic,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_key_file(data_dir: Path, data: bytes) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILENAME
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def foreign_pem(key: PrivateKeyTypes, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


FOREIGN_KEYS: dict[str, Callable[[], bytes]] = {
    "RSA": lambda: foreign_pem(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        serialization.PrivateFormat.TraditionalOpenSSL,
    ),
    "EC": lambda: foreign_pem(
        ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8
    ),
    "X25519": lambda: foreign_pem(
        x25519.X25519PrivateKey.generate(), serialization.PrivateFormat.PKCS8
    ),
}

# Arbitrary bytes with no PEM armour anywhere in them.
GARBAGE = bytes(range(256)).replace(b"-", b"")


# --- first start and reload ---


def test_first_start_creates_a_private_key_file_and_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    identity, created = load_or_create_identity(data_dir, None)
    assert created
    path = data_dir / KEY_FILENAME
    assert mode_of(path) == 0o600
    assert mode_of(data_dir) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert sorted(os.listdir(data_dir)) == [KEY_FILENAME]  # no temp file left behind
    assert len(identity.secret_key_bytes) == 32
    assert len(identity.public_key_bytes) == 32


def test_second_start_loads_the_same_key(tmp_path: Path) -> None:
    first, created = load_or_create_identity(tmp_path, None)
    before = (tmp_path / KEY_FILENAME).read_bytes()
    second, created_again = load_or_create_identity(tmp_path, None)
    assert created and not created_again
    assert second.secret_key_bytes == first.secret_key_bytes
    assert second == first
    assert load_identity(tmp_path, None) == first
    assert (tmp_path / KEY_FILENAME).read_bytes() == before


def test_two_starts_make_two_different_nodes(tmp_path: Path) -> None:
    a, _ = load_or_create_identity(tmp_path / "a", None)
    b, _ = load_or_create_identity(tmp_path / "b", None)
    assert a != b
    assert a.public_key_bytes != b.public_key_bytes


def test_load_identity_does_not_create(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no node key"):
        load_identity(tmp_path, None)
    assert list(tmp_path.iterdir()) == []


def test_public_key_is_the_iroh_endpoint_id(tmp_path: Path) -> None:
    identity, _ = load_or_create_identity(tmp_path, None)
    iroh_key = iroh.SecretKey.from_bytes(identity.secret_key_bytes)
    assert iroh_key.public().to_bytes() == identity.public_key_bytes


def test_signature_verifies_with_the_public_key() -> None:
    identity = NodeIdentity.generate()
    signature = identity.sign(b"hello")
    public = ed25519.Ed25519PublicKey.from_public_bytes(identity.public_key_bytes)
    public.verify(signature, b"hello")  # raises InvalidSignature if wrong


def test_repr_does_not_show_the_secret() -> None:
    identity = NodeIdentity.generate()
    text = repr(identity)
    assert identity.public_key_bytes.hex() in text
    assert identity.secret_key_bytes.hex() not in text


# --- passphrase ---


def test_encrypted_round_trip(tmp_path: Path) -> None:
    identity, created = load_or_create_identity(tmp_path, "correct horse")
    assert created
    data = (tmp_path / KEY_FILENAME).read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert load_or_create_identity(tmp_path, "correct horse") == (identity, False)


def test_encrypted_key_without_passphrase_is_refused_untouched(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "secret")
    before = (tmp_path / KEY_FILENAME).read_bytes()
    with pytest.raises(IdentityError, match="encrypted; set GATE_PASSPHRASE"):
        load_or_create_identity(tmp_path, None)
    assert (tmp_path / KEY_FILENAME).read_bytes() == before


def test_wrong_passphrase_is_refused_untouched(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, "secret")
    before = (tmp_path / KEY_FILENAME).read_bytes()
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_or_create_identity(tmp_path, "not the secret")
    assert (tmp_path / KEY_FILENAME).read_bytes() == before


def test_plain_key_loads_even_when_a_passphrase_is_set(tmp_path: Path) -> None:
    identity, _ = load_or_create_identity(tmp_path, None)
    assert load_identity(tmp_path, "unused") == identity


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="passphrase is empty"):
        load_or_create_identity(tmp_path, "")
    assert not (tmp_path / KEY_FILENAME).exists()


# --- damaged, foreign or exposed key files are never replaced ---


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", "is empty", id="empty"),
        pytest.param(b"\n  \n", "is empty", id="blank"),
        pytest.param(GARBAGE, "not a PEM private key", id="garbage"),
        pytest.param(
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2Vw",
            "not a PEM private key",
            id="truncated",
        ),
        pytest.param(
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIE\n-----END PRIVATE KEY-----\n",
            "not a PEM private key",
            id="truncated-body",
        ),
        pytest.param(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIGjMF8GCSqGSIb3DQEFDTBSMDEGCSqGSIb3\n"
            b"-----END ENCRYPTED PRIVATE KEY-----\n",
            "encrypted; set GATE_PASSPHRASE",
            id="truncated-encrypted",
        ),
    ],
)
def test_corrupt_key_file_is_refused_untouched(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = write_key_file(tmp_path, content)
    with pytest.raises(IdentityError, match=message):
        load_or_create_identity(tmp_path, None)
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == [KEY_FILENAME]


def test_truncated_valid_key_is_refused_untouched(tmp_path: Path) -> None:
    pem = NodeIdentity.generate().to_pem(None)
    content = pem[: len(pem) // 2]
    path = write_key_file(tmp_path, content)
    with pytest.raises(IdentityError, match="not a PEM private key"):
        load_or_create_identity(tmp_path, None)
    assert path.read_bytes() == content


def test_corrupt_encrypted_key_is_refused_untouched(tmp_path: Path) -> None:
    pem = NodeIdentity.generate().to_pem("secret")
    lines = pem.splitlines(keepends=True)
    lines[2] = lines[2][::-1].lstrip(b"\n") + b"\n"  # scramble one base64 line
    content = b"".join(lines)
    path = write_key_file(tmp_path, content)
    with pytest.raises(IdentityError, match="wrong passphrase, or the key is corrupt"):
        load_or_create_identity(tmp_path, "secret")
    assert path.read_bytes() == content


@pytest.mark.parametrize("kind", sorted(FOREIGN_KEYS))
def test_foreign_key_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    content = FOREIGN_KEYS[kind]()
    path = write_key_file(tmp_path, content)
    with pytest.raises(IdentityError, match=f"foreign key type: expected Ed25519, found {kind}"):
        load_or_create_identity(tmp_path, None)
    assert path.read_bytes() == content


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_identity(tmp_path, None)
    path = tmp_path / KEY_FILENAME
    before = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(IdentityError, match=re.escape(f"chmod 600 {path}")):
        load_or_create_identity(tmp_path, None)
    assert path.read_bytes() == before
    assert mode_of(path) == mode  # refused, not silently "fixed"


def test_key_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILENAME).mkdir()
    with pytest.raises(IdentityError, match=r"cannot read node key|not a regular file"):
        load_or_create_identity(tmp_path, None)


@pytest.mark.parametrize("bad", [b"not pem", b"-----BEGIN PUBLIC KEY-----\nAAAA\n"])
def test_from_pem_rejects_non_private_keys(bad: bytes) -> None:
    with pytest.raises(IdentityError, match="not a PEM private key"):
        NodeIdentity.from_pem(bad, None)


# --- import and export ---


def test_export_import_round_trip(tmp_path: Path) -> None:
    original, _ = load_or_create_identity(tmp_path / "old", None)
    exported = export_identity(original, "transport")
    assert exported.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    imported = import_identity(
        tmp_path / "new", exported, source_passphrase="transport", passphrase="at rest"
    )
    assert imported == original
    stored = (tmp_path / "new" / KEY_FILENAME).read_bytes()
    assert stored.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert mode_of(tmp_path / "new" / KEY_FILENAME) == 0o600
    assert load_identity(tmp_path / "new", "at rest") == original


def test_import_over_an_existing_key_needs_force(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path, None)
    before = (tmp_path / KEY_FILENAME).read_bytes()
    other = NodeIdentity.generate().to_pem(None)
    with pytest.raises(IdentityError, match=r"already exists.*--force"):
        import_identity(tmp_path, other, source_passphrase=None, passphrase=None)
    assert (tmp_path / KEY_FILENAME).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [KEY_FILENAME]


def test_import_with_force_keeps_a_backup(tmp_path: Path) -> None:
    old, _ = load_or_create_identity(tmp_path, None)
    old_bytes = (tmp_path / KEY_FILENAME).read_bytes()
    new = NodeIdentity.generate()
    imported = import_identity(
        tmp_path, new.to_pem(None), source_passphrase=None, passphrase=None, force=True
    )
    assert imported == new
    assert load_identity(tmp_path, None) == new
    backups = sorted(tmp_path.glob(f"{KEY_FILENAME}.bak-*"))
    assert len(backups) == 1
    assert backups[0].name.endswith("Z")
    assert backups[0].read_bytes() == old_bytes
    assert mode_of(backups[0]) == 0o600
    assert NodeIdentity.from_pem(backups[0].read_bytes(), None) == old


def test_repeated_forced_imports_keep_every_backup(tmp_path: Path) -> None:
    keys = [NodeIdentity.generate() for _ in range(3)]
    for key in keys:
        import_identity(
            tmp_path, key.to_pem(None), source_passphrase=None, passphrase=None, force=True
        )
    backups = {NodeIdentity.from_pem(p.read_bytes(), None) for p in tmp_path.glob("*.bak-*")}
    assert backups == set(keys[:2])
    assert load_identity(tmp_path, None) == keys[2]


def test_import_with_force_replaces_a_corrupt_key_and_backs_it_up(tmp_path: Path) -> None:
    write_key_file(tmp_path, b"garbage")
    new = NodeIdentity.generate()
    import_identity(tmp_path, new.to_pem(None), source_passphrase=None, passphrase=None, force=True)
    assert load_identity(tmp_path, None) == new
    [backup] = tmp_path.glob("*.bak-*")
    assert backup.read_bytes() == b"garbage"


@pytest.mark.parametrize("kind", sorted(FOREIGN_KEYS))
def test_import_refuses_foreign_keys(tmp_path: Path, kind: str) -> None:
    with pytest.raises(IdentityError, match="cannot import node key: foreign key type"):
        import_identity(tmp_path, FOREIGN_KEYS[kind](), source_passphrase=None, passphrase=None)
    assert not (tmp_path / KEY_FILENAME).exists()


def test_import_needs_the_source_passphrase(tmp_path: Path) -> None:
    pem = NodeIdentity.generate().to_pem("source")
    with pytest.raises(IdentityError, match="encrypted; set GATE_PASSPHRASE"):
        import_identity(tmp_path, pem, source_passphrase=None, passphrase=None)
    with pytest.raises(IdentityError, match="wrong passphrase"):
        import_identity(tmp_path, pem, source_passphrase="nope", passphrase=None)
    assert not (tmp_path / KEY_FILENAME).exists()


# --- atomic writes ---


def test_atomic_write_creates_0600_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    old_umask = os.umask(0o022)
    try:
        write_secret_file_atomic(path, b"one")
        write_secret_file_atomic(path, b"two")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"two"
    assert mode_of(path) == 0o600
    assert os.listdir(tmp_path) == ["secret"]


def test_atomic_write_without_overwrite_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_secret_file_atomic(path, b"new", overwrite=False)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["secret"]


def test_failed_replace_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    write_secret_file_atomic(path, b"old")

    def fail_replace(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_secret_file_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["secret"]


def test_failed_forced_import_leaves_the_old_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _ = load_or_create_identity(tmp_path, None)

    def fail_replace(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(IdentityError, match="disk on fire"):
        import_identity(
            tmp_path,
            NodeIdentity.generate().to_pem(None),
            source_passphrase=None,
            passphrase=None,
            force=True,
        )
    monkeypatch.undo()
    assert load_identity(tmp_path, None) == old
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_concurrently_created_key_wins_over_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process writes node.key between our "is there a key?" and our write.
    theirs = NodeIdentity.generate()
    real_link = os.link

    def link_after_a_rival(src: str, dst: str) -> None:
        write_key_file(tmp_path, theirs.to_pem(None))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_a_rival)
    identity, created = load_or_create_identity(tmp_path, None)
    assert not created
    assert identity == theirs
    assert sorted(os.listdir(tmp_path)) == [KEY_FILENAME]
