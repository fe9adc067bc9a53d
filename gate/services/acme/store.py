"""The ACME keys and certificates in the data dir (`acme/`, 0700): the account key
(`account-key.pem`) and, per name, one file (`<name>.pem`) holding the certificate's
key and then its chain. Key and chain in one file, replaced atomically, can never be a
mismatched pair; a new key is made for each certificate. Every file is 0600 and written
with `write_secret_file_atomic`. Nothing here is ever sent anywhere: the CA gets a CSR
and signatures, the relay a TXT value."""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gate.identity import write_secret_file_atomic

__all__ = ["Issued", "account_key", "load_issued", "new_key_pem", "save_issued"]

ACME_DIR = "acme"
_ACCOUNT_KEY = "account-key.pem"


@dataclass(frozen=True)
class Issued:
    """A certificate the CA issued for `name`, kept at `path`."""

    name: str
    path: Path
    not_before: datetime.datetime
    not_after: datetime.datetime
    chain_pem: bytes

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds() / 86400


def _dir(data_dir: Path) -> Path:
    path = data_dir / ACME_DIR
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def new_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def account_key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The ACME account's key, made on first use (blocking)."""
    path = _dir(data_dir) / _ACCOUNT_KEY
    if not path.exists():
        # Made meanwhile by another task: theirs is the account's.
        with contextlib.suppress(FileExistsError):
            write_secret_file_atomic(path, new_key_pem(), overwrite=False)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC key")
    return key


def _path(data_dir: Path, name: str) -> Path:
    if "/" in name or name.startswith("."):
        raise ValueError(f"not a host name: {name!r}")
    return _dir(data_dir) / f"{name.lower()}.pem"


def save_issued(data_dir: Path, name: str, key_pem: bytes, chain_pem: bytes) -> Issued:
    """Keep a new certificate (blocking); what `load_issued` will read back."""
    path = _path(data_dir, name)
    write_secret_file_atomic(path, key_pem + chain_pem)
    issued = load_issued(data_dir, name)
    if issued is None:
        raise ValueError(f"the certificate stored for {name} does not load")
    return issued


def load_issued(data_dir: Path, name: str) -> Issued | None:
    """The certificate kept for `name`, or None: missing, unreadable, not for `name`, or
    not its key's."""
    path = _path(data_dir, name)
    try:
        data = path.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
        certs = x509.load_pem_x509_certificates(data)
        sans = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, IndexError, x509.ExtensionNotFound):
        return None
    leaf = certs[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        return None
    if name.lower() not in {n.lower() for n in sans.get_values_for_type(x509.DNSName)}:
        return None
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    return Issued(name, path, leaf.not_valid_before_utc, leaf.not_valid_after_utc, chain)
