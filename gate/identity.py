"""The node's Ed25519 identity: made once, kept in the data dir, never silently replaced.

A Gate node *is* its key: the public half is the iroh endpoint id that peers dial and
authorize, so a lost or swapped key is a new node that nobody trusts. Hence the rules:

* First start generates a key and writes ``<data dir>/node.key`` as PKCS#8 PEM, mode
  0600, encrypted with a passphrase when one is given (the caller reads
  ``GATE_PASSPHRASE``; this module only takes ``passphrase: str | None``).
* A key file that exists is only ever *read*. If it is empty, corrupt, truncated, of a
  foreign type, encrypted without a passphrase, or readable by group/others, loading
  fails with :class:`~gate.errors.IdentityError` and the file is left byte-for-byte as it
  was. Recovering is a human decision (restore a backup, ``import --force``), never ours.
* Writes are atomic: a temp file created ``O_EXCL`` with mode 0600 in the same dir,
  fsync, rename into place, fsync the directory. A crash leaves the old file or the new
  one, never half of either. Creating the first key uses a hard link rather than a
  rename, so two processes starting at once cannot overwrite each other's fresh key:
  the loser loads the winner's.
* Replacing a key (``import_identity(force=True)``) first copies the old file to
  ``node.key.bak-<UTC timestamp>``.

``cryptography`` exceptions (ValueError, TypeError, UnsupportedAlgorithm) and OSError
are mapped to IdentityError here, at the boundary. The raw 32-byte keys are exactly what
``iroh.SecretKey.from_bytes`` takes and ``SecretKey.public().to_bytes()`` returns, so the
node id derived from :attr:`NodeIdentity.public_key_bytes` is the iroh endpoint id.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gate.errors import IdentityError, IdentityStorageError

__all__ = [
    "KEY_FILENAME",
    "NodeIdentity",
    "export_identity",
    "import_identity",
    "load_identity",
    "load_or_create_identity",
    "save_beside",
    "write_secret_file_atomic",
]

KEY_FILENAME = "node.key"

# The BEGIN line of any PEM private key: "PRIVATE KEY", "ENCRYPTED PRIVATE KEY" (PKCS#8),
# "RSA PRIVATE KEY" / "EC PRIVATE KEY" (traditional OpenSSL), "OPENSSH PRIVATE KEY", ...
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----")
# Traditional OpenSSL encryption is announced by a header line instead of the label.
_PEM_PROC_TYPE_ENCRYPTED = re.compile(rb"^Proc-Type:[ \t]*4,ENCRYPTED", re.MULTILINE)


@dataclass(frozen=True, eq=False, slots=True)
class NodeIdentity:
    """A node's Ed25519 key pair. Compares equal by key, never prints the secret."""

    private_key: ed25519.Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, passphrase: str | None) -> NodeIdentity:
        """Parse a PEM private key, which must be Ed25519.

        ``passphrase`` is used only if the PEM is encrypted; a plain PEM loads whatever
        it is. Raises IdentityError saying what is wrong, never a library exception.
        """
        match = _PEM_PRIVATE_KEY.search(data)
        if match is None:
            raise IdentityError("not a PEM private key")
        encrypted = (
            match.group(1) == b"ENCRYPTED " or _PEM_PROC_TYPE_ENCRYPTED.search(data) is not None
        )
        password: bytes | None = None  # a plain PEM loads whatever passphrase was given
        if encrypted:
            if passphrase is None:
                raise IdentityError("the private key is encrypted; set GATE_PASSPHRASE")
            password = _passphrase_bytes(passphrase)
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except UnsupportedAlgorithm as exc:
            # Also what a bit flip in the algorithm OID looks like.
            raise IdentityError(
                "foreign key type: expected Ed25519, found an unsupported algorithm"
                f" (or the key is corrupt: {exc})"
            ) from exc
        except (ValueError, TypeError) as exc:
            if encrypted:
                raise IdentityError(
                    "cannot decrypt the private key: wrong passphrase, or the key is corrupt"
                    f" ({exc})"
                ) from exc
            raise IdentityError(f"not a PEM private key: corrupt or truncated ({exc})") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise IdentityError(f"foreign key type: expected Ed25519, found {_key_type_name(key)}")
        return cls(key)

    @property
    def secret_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 seed, as ``iroh.SecretKey.from_bytes`` takes it."""
        return self.private_key.private_bytes_raw()

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key: the iroh endpoint id."""
        return self.private_key.public_key().public_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return self.private_key.sign(data)

    def to_pem(self, passphrase: str | None) -> bytes:
        """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
        encryption: serialization.KeySerializationEncryption
        if passphrase is None:
            encryption = serialization.NoEncryption()
        else:
            encryption = serialization.BestAvailableEncryption(_passphrase_bytes(passphrase))
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeIdentity):
            return NotImplemented
        return hmac.compare_digest(self.secret_key_bytes, other.secret_key_bytes)

    def __hash__(self) -> int:
        return hash(self.public_key_bytes)

    def __repr__(self) -> str:
        return f"NodeIdentity(public_key={self.public_key_bytes.hex()})"


def load_or_create_identity(data_dir: Path, passphrase: str | None) -> tuple[NodeIdentity, bool]:
    """Load the node key from ``data_dir``, generating it on first start.

    Returns ``(identity, created)``. An existing key file that cannot be used raises
    IdentityError and is left untouched.
    """
    _ensure_data_dir(data_dir)
    path = data_dir / KEY_FILENAME
    existing = _load_key_file(path, passphrase)
    if existing is not None:
        return existing, False
    identity = NodeIdentity.generate()
    pem = identity.to_pem(passphrase)
    try:
        write_secret_file_atomic(path, pem, overwrite=False)
    except FileExistsError:
        # Another process created the key between our read and our write: theirs wins.
        return load_identity(data_dir, passphrase), False
    except OSError as exc:
        raise IdentityStorageError(f"cannot write node key {path}: {exc}") from exc
    return identity, True


def load_identity(data_dir: Path, passphrase: str | None) -> NodeIdentity:
    """Load the node key from ``data_dir``; IdentityError if there is none."""
    path = data_dir / KEY_FILENAME
    identity = _load_key_file(path, passphrase)
    if identity is None:
        raise IdentityError(f"no node key at {path}")
    return identity


def import_identity(
    data_dir: Path,
    pem: bytes,
    *,
    source_passphrase: str | None,
    passphrase: str | None,
    force: bool = False,
) -> NodeIdentity:
    """Install ``pem`` (an Ed25519 private key) as the node key.

    ``source_passphrase`` decrypts ``pem``; ``passphrase`` encrypts the stored copy. An
    existing key is only replaced with ``force``, and then kept as
    ``node.key.bak-<UTC timestamp>`` first.
    """
    try:
        identity = NodeIdentity.from_pem(pem, source_passphrase)
    except IdentityError as exc:
        raise IdentityError(f"cannot import node key: {exc}") from exc
    new_pem = identity.to_pem(passphrase)
    _ensure_data_dir(data_dir)
    path = data_dir / KEY_FILENAME
    try:
        if force:
            _backup_key_file(path)
            write_secret_file_atomic(path, new_pem)
        else:
            write_secret_file_atomic(path, new_pem, overwrite=False)
    except FileExistsError as exc:
        raise IdentityError(
            f"a node key already exists at {path}; use --force to replace it"
            " (the old key is kept as a backup)"
        ) from exc
    except OSError as exc:
        raise IdentityStorageError(f"cannot write node key {path}: {exc}") from exc
    return identity


def export_identity(identity: NodeIdentity, passphrase: str | None) -> bytes:
    """The key as PKCS#8 PEM, encrypted when a passphrase is given (for backup or moving)."""
    return identity.to_pem(passphrase)


def write_secret_file_atomic(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically and durably.

    The bytes go to a temp file in the same directory (created ``O_EXCL``, 0600), are
    fsynced, and then renamed over ``path`` (``overwrite=True``) or hard-linked to it
    (``overwrite=False``: FileExistsError if ``path`` exists, and nothing is replaced);
    finally the directory is fsynced so the new name survives a crash. The temp file is
    removed on every path. Raises OSError; callers map it to their own error.
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # the umask may have narrowed 0600; make it exact
                os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_replace(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _link_no_replace(src: Path, dst: Path) -> None:
    """Give ``src`` the name ``dst`` unless ``dst`` exists (FileExistsError), atomically."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # A filesystem without hard links: check-then-rename is the best left. The race
        # window needs two first starts at once on such a filesystem.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "file exists", str(dst)) from exc
        os.replace(src, dst)


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":  # directories cannot be opened, and NTFS renames are journaled
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise  # some filesystems cannot fsync a directory; that is not an error
    finally:
        os.close(fd)


def _ensure_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityStorageError(f"cannot create data dir {data_dir}: {exc}") from exc


def _load_key_file(path: Path, passphrase: str | None) -> NodeIdentity | None:
    """The identity in ``path``, or None if there is no file. Never writes."""
    try:
        f = open(path, "rb")  # noqa: SIM115 -- closed below; we need fstat on this very fd
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityStorageError(f"cannot read node key {path}: {exc}") from exc
    with f:
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise IdentityError(f"node key {path} is not a regular file")
            # Like ssh: a secret others can read is refused, not silently tightened.
            if os.name != "nt" and st.st_mode & 0o077:
                raise IdentityError(
                    f"node key {path} is accessible by group or others"
                    f" (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
                )
            data = f.read()
        except OSError as exc:
            raise IdentityStorageError(f"cannot read node key {path}: {exc}") from exc
    if not data.strip():
        raise IdentityError(
            f"node key {path} is empty; refusing to replace it"
            " (restore a backup, or move it away to create a new node)"
        )
    try:
        return NodeIdentity.from_pem(data, passphrase)
    except IdentityError as exc:
        raise IdentityError(f"cannot load node key {path}: {exc}; the file was left as is") from exc


def _backup_key_file(path: Path) -> Path | None:
    """Copy ``path`` to ``<path>.bak-<UTC timestamp>`` (0600); None if there is no file.

    The bytes are copied as they are, valid or not: a backup of a corrupt key may still
    be what someone needs to recover.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return save_beside(path, "bak", data)


def save_beside(path: Path, kind: str, data: bytes) -> Path:
    """Write ``data`` next to ``path`` as ``<name>.<kind>-<UTC timestamp>`` (0600, with
    ``-2``, ``-3``... after it when that name is taken), never over an older copy.
    OSError (FileExistsError after 99 copies in one second) when it cannot."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 100):
        suffix = "" if n == 1 else f"-{n}"
        copy = path.with_name(f"{path.name}.{kind}-{stamp}{suffix}")
        try:
            write_secret_file_atomic(copy, data, overwrite=False)
        except FileExistsError:
            continue
        return copy
    raise FileExistsError(errno.EEXIST, f"too many {kind} copies in one second", str(path))


def _passphrase_bytes(passphrase: str) -> bytes:
    if not passphrase:
        raise IdentityError("the passphrase is empty; unset GATE_PASSPHRASE or set a non-empty one")
    return passphrase.encode("utf-8")


def _key_type_name(key: object) -> str:
    """ "RSA (2048 bits)", "EC (secp256r1)", "X25519", ... for error messages."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC ({key.curve.name})"
    # Named from the class so no deprecated module (dh, dsa) needs importing.
    return type(key).__name__.removesuffix("PrivateKey")
