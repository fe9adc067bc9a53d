"""The relay door's certificate (gate.services.http.tls.NodeCertificate): configured files
picked up again when replaced, and a self-signed pair that always matches."""

from __future__ import annotations

import contextlib
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gate.config import TlsConfig
from gate.services.http.tls import CERT_FILE, KEY_FILE, NodeCertificate, _write_self_signed

NAME = "n.relay.test"


def served_certificate(
    context: ssl.SSLContext, name: str = NAME, client_ctx: ssl.SSLContext | None = None
) -> bytes:
    """The DER certificate a client sees in a handshake with `context` (in memory) for
    the server name `name`; `client_ctx` checks it (default: no check)."""
    if client_ctx is None:
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # a handshake is a few flights; bounded
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if client.version() and server.version():
            break
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return der


def pem_of(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


def replace_pair(cert: Path, key: Path, tmp: Path) -> None:
    """A new pair moved into place as a renewal does (write aside, rename over)."""
    _write_self_signed(tmp / "c.pem", tmp / "k.pem", [NAME])
    os.replace(tmp / "k.pem", key)
    os.replace(tmp / "c.pem", cert)


def test_replaced_files_are_served_to_new_handshakes_without_a_restart(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _write_self_signed(cert, key, [NAME])
    first = pem_of(cert)
    certificate = NodeCertificate(TlsConfig(cert_file=str(cert), key_file=str(key)), tmp_path)
    old_context = certificate.context()
    assert old_context is not None and served_certificate(old_context) == first

    (tmp_path / "new").mkdir()
    replace_pair(cert, key, tmp_path / "new")
    second = pem_of(cert)
    assert second != first
    context = certificate.context()
    assert context is not None and served_certificate(context) == second
    # A connection that began with the old context keeps it.
    assert served_certificate(old_context) == first


def test_a_half_replaced_pair_keeps_the_previous_certificate_until_it_loads(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _write_self_signed(cert, key, [NAME])
    first = pem_of(cert)
    certificate = NodeCertificate(TlsConfig(cert_file=str(cert), key_file=str(key)), tmp_path)
    (tmp_path / "new").mkdir()
    _write_self_signed(tmp_path / "new" / "c.pem", tmp_path / "new" / "k.pem", [NAME])
    os.replace(tmp_path / "new" / "c.pem", cert)  # the certificate first, its key not yet
    context = certificate.context()
    assert context is not None and served_certificate(context) == first
    os.replace(tmp_path / "new" / "k.pem", key)
    context = certificate.context()
    assert context is not None and served_certificate(context) == pem_of(cert) != first


def test_a_self_signed_certificate_not_matching_its_key_is_made_anew(tmp_path):
    """The process died after writing a new key and before its certificate: the next
    start finds the old certificate beside a key that is not its own."""
    certificate = NodeCertificate(TlsConfig(), tmp_path)
    certificate.cover([NAME])
    stray = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / KEY_FILE).write_bytes(
        stray.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    restarted = NodeCertificate(TlsConfig(), tmp_path)
    restarted.cover([NAME])  # before: ssl.SSLError, key values mismatch
    context = restarted.context()
    assert context is not None
    assert served_certificate(context) == pem_of(tmp_path / CERT_FILE)


def test_an_installed_certificate_serves_its_name_and_the_self_signed_one_the_rest(tmp_path):
    """What ACME issuance installs (gate.services.acme): the SNI callback picks it for its
    name from the next handshake on; other names keep the self-signed certificate; a
    connection set up before keeps what it got."""
    other = "n.other.test"
    certificate = NodeCertificate(TlsConfig(), tmp_path)
    certificate.cover([NAME, other])
    context = certificate.context()
    assert context is not None
    self_signed = served_certificate(context, NAME)

    issued_dir = tmp_path / "issued"
    issued_dir.mkdir()
    _write_self_signed(issued_dir / "c.pem", issued_dir / "k.pem", [NAME])
    both = issued_dir / "both.pem"  # the store's layout: the key, then the chain
    both.write_bytes((issued_dir / "k.pem").read_bytes() + (issued_dir / "c.pem").read_bytes())
    certificate.install(NAME.upper(), both)  # names compare case-insensitively

    expected = x509.load_pem_x509_certificate((issued_dir / "c.pem").read_bytes())
    der = expected.public_bytes(serialization.Encoding.DER)
    assert certificate.context() is context  # the same context: nothing restarts
    assert served_certificate(context, NAME) == der
    assert served_certificate(context, other) == self_signed
