"""The certificate the node's relay door presents, as an `ssl.SSLContext`.

Either the PEM files named by `tls.cert_file` and `tls.key_file`, or, when none are
configured, a self-signed certificate for the node's relay names (`<node-id>.<domain>`
of each relay it registered with), made when a name first needs it and kept in the data
dir (`relay-cert.pem`, `relay-key.pem`, 0600, each written atomically); a new relay name
makes a new one covering every name. Browsers do not trust a self-signed certificate:
it serves clients told to trust it until a certificate from the CA is installed for a
name (`install`, by gate.services.acme.issuer). Then a handshake whose server name is
that name switches to it (the self-signed context's SNI callback), so each relay domain
gets its own certificate and a new one is served from the next handshake on.

Files from the config are watched: each new handshake asks for the context, which stats
both files (two `stat` calls) and loads them again when either changed, so a renewed
certificate is served without a restart. Connections already open keep the context
they began with. A pair that does not load (one file replaced, not yet the other) is
not taken: the previous context stays until the pair loads. A self-signed pair whose key
is not the certificate's (the process died between writing the two) is made anew.
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
        self._loaded: tuple[object, ...] | None = None  # the configured files' stat when read
        # Certificates from the CA, by the name they serve; replaced whole, never mutated,
        # as the SNI callback reads it from the handshake of any connection.
        self._issued: dict[str, ssl.SSLContext] = {}
        if config.cert_file:
            files = Path(config.cert_file), Path(config.key_file)
            self._loaded = _signature(files)
            self._context = _context(*files)

    def context(self) -> ssl.SSLContext | None:
        """The context new handshakes use; None until a name needs a self-signed one."""
        if self._loaded is not None:
            self._reload_if_changed()
        return self._context

    def _reload_if_changed(self) -> None:
        files = Path(self.config.cert_file), Path(self.config.key_file)
        signature = _signature(files)
        if signature == self._loaded:
            return
        try:
            context = _context(*files)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Likely mid-replacement: keep serving the pair that loads; retried next time.
            log.warning(
                "certificate files do not load; keeping the previous", extra={"error": str(exc)}
            )
            return
        self._context, self._loaded = context, signature
        log.info("certificate reloaded", extra={"cert_file": self.config.cert_file})

    def cover(self, names: list[str]) -> None:
        """Make sure the certificate names `names` (blocking: run it in a thread). Files
        from the config are taken as they are."""
        if self.config.cert_file:
            return
        cert_path, key_path = self.data_dir / CERT_FILE, self.data_dir / KEY_FILE
        have = _names_in(cert_path, key_path)
        if not have.issuperset(names):
            _write_self_signed(cert_path, key_path, sorted(have | set(names)))
            log.info("made a self-signed certificate", extra={"names": ",".join(sorted(names))})
        if self._context is None or not have.issuperset(names):
            context = _context(cert_path, key_path)
            context.sni_callback = self._by_name
            self._context = context

    def install(self, name: str, path: Path) -> None:
        """Serve the key and chain in `path` (one PEM file) to handshakes for `name` from
        now on (blocking: run it in a thread). Connections already open keep theirs."""
        context = _context(path, path)
        self._issued = {**self._issued, name.lower(): context}
        log.info("certificate reloaded", extra={"domain": name})

    def _by_name(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        """The SNI callback: a name with a certificate from the CA gets that one."""
        context = self._issued.get((server_name or "").lower())
        if context is not None:
            connection.context = context


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _signature(files: tuple[Path, Path]) -> tuple[object, ...]:
    """What changes when either file is replaced or rewritten (None: missing)."""
    out: list[object] = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _names_in(path: Path, key_path: Path) -> set[str]:
    """The names the self-signed certificate covers, or none when it must be made anew:
    missing, unreadable, expiring, or not the key's (a crash between the two writes)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return set()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != (
        cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    ):
        log.warning("the self-signed certificate is not its key's: making a new pair")
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
