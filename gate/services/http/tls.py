"""The certificate the node's relay door presents, as an `ssl.SSLContext`.

Either the PEM files named by `tls.cert_file` and `tls.key_file`, or, when none are
configured, a self-signed certificate for the node's relay names (`<node-id>.<domain>`
of each relay it registered with), made when a name first needs it and kept in the data
dir (`relay-cert.pem`, `relay-key.pem`, 0600, each written atomically); a new relay name
makes a new one covering every name. Browsers do not trust a self-signed certificate:
it serves clients told to trust it, until ACME issuance (a later step) plugs in here.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gate.config import TlsConfig
from gate.identity import write_secret_file_atomic

__all__ = ["CERT_FILE", "KEY_FILE", "NodeCertificate"]

log = logging.getLogger("gate.tls")

CERT_FILE = "relay-cert.pem"
KEY_FILE = "relay-key.pem"
_VALIDITY = datetime.timedelta(days=365)


class NodeCertificate:
    def __init__(self, config: TlsConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self._context: ssl.SSLContext | None = None
        if config.cert_file:
            self._context = _context(Path(config.cert_file), Path(config.key_file))

    def context(self) -> ssl.SSLContext | None:
        """The context new handshakes use; None until a name needs a self-signed one."""
        return self._context

    def cover(self, names: list[str]) -> None:
        """Make sure the certificate names `names` (blocking: run it in a thread). Files
        from the config are taken as they are."""
        if self.config.cert_file:
            return
        cert_path, key_path = self.data_dir / CERT_FILE, self.data_dir / KEY_FILE
        have = _names_in(cert_path) if key_path.exists() else set()
        if not have.issuperset(names):
            _write_self_signed(cert_path, key_path, sorted(have | set(names)))
            log.info("made a self-signed certificate", extra={"names": ",".join(sorted(names))})
        if self._context is None or not have.issuperset(names):
            self._context = _context(cert_path, key_path)


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _names_in(path: Path) -> set[str]:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    if cert.not_valid_after_utc - datetime.timedelta(days=7) < datetime.datetime.now(datetime.UTC):
        return set()  # expiring: make a new one
    return set(sans.get_values_for_type(x509.DNSName))


def _write_self_signed(cert_path: Path, key_path: Path, names: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The key first: a certificate never names a key that is not there.
    write_secret_file_atomic(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    write_secret_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
