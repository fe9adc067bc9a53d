"""The node's ACME half against a real CA: pebble and pebble-challtestsrv (tests/pebble.py),
the issuer (gate.services.acme.issuer) in this process. What the relay does with a
dns_challenge (publish the TXT record in challtestsrv, remove it on activate_domain) the
test's `DirectDns` does itself, talking to the same challtestsrv: the node's half is
tested here on its own, and the whole path through `gate relay serve` in
test_relay_acme.py. The served certificate is read from real TLS handshakes against the
node's certificate contexts (in memory), checked by a client that trusts pebble's root."""

from __future__ import annotations

import base64
import datetime
import itertools
import logging
import ssl
import stat

import pytest
import trio
from cryptography import x509

from gate.config import TlsConfig
from gate.services.acme import issuer as issuer_module
from gate.services.acme.issuer import AcmeIssuer
from gate.services.acme.store import ACME_DIR
from gate.services.http.tls import NodeCertificate
from tests.pebble.ca import Pebble, have_pebble
from tests.pebble.front import AcmeFront
from tests.services.test_node_certificate import served_certificate

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have_pebble(), reason="scripts/system-deps.sh installs pebble"),
]

NAME = "w4z2wxgvny7ioaeqikmlsbxwsujnpxaklk7rtdv7kv7sirnzfj4q.relay.test"
OTHER = "w4z2wxgvny7ioaeqikmlsbxwsujnpxaklk7rtdv7kv7sirnzfj4q.other.test"


class DirectDns:
    """The relay's DNS part, done by the test against challtestsrv (see the docstring)."""

    def __init__(self, pebble: Pebble, *, wrong_value: bool = False) -> None:
        self.pebble = pebble
        self.wrong_value = wrong_value
        self.published: list[tuple[str, str]] = []
        self.cleaned: list[str] = []

    async def publish(self, domain: str, txt_value: str) -> None:
        assert domain == f"_acme-challenge.{domain.removeprefix('_acme-challenge.')}"
        assert len(txt_value) == 43 and "=" not in txt_value  # base64url SHA-256
        value = "A" * 43 if self.wrong_value else txt_value
        self.published.append((domain, txt_value))
        await trio.to_thread.run_sync(self.pebble.set_txt, domain, value)

    async def done(self, name: str) -> None:
        self.cleaned.append(name)
        await trio.to_thread.run_sync(self.pebble.clear_txt, f"_acme-challenge.{name}")


@pytest.fixture
def pebble(tmp_path):
    ca = Pebble(tmp_path / "pebble").start()
    yield ca
    ca.close()


def node_certificate(
    tmp_path, pebble: Pebble, names: list[str], directory: str = ""
) -> tuple[NodeCertificate, AcmeIssuer]:
    config = TlsConfig(
        acme_directory=directory or pebble.directory_url, acme_ca_bundle=str(pebble.ca_bundle)
    )
    certificate = NodeCertificate(config, tmp_path / "data")
    certificate.cover(names)  # the self-signed one, as registration makes it
    return certificate, AcmeIssuer(config, tmp_path / "data", certificate)


def served(certificate: NodeCertificate, name: str, root_pem: str | None) -> x509.Certificate:
    """The certificate a handshake for `name` gets (verified against `root_pem`)."""
    context = certificate.context()
    assert context is not None
    client = ssl.create_default_context(cadata=root_pem) if root_pem else None
    return x509.load_der_x509_certificate(served_certificate(context, name, client))


async def wait_until(predicate, what: str, within: float = 60.0) -> None:
    with trio.move_on_after(within):
        while not predicate():  # noqa: ASYNC110 (the issuer's state, and a CA's doing)
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_name_gets_a_certificate_the_ca_issued_and_it_is_served(tmp_path, pebble):
    certificate, issuer = node_certificate(tmp_path, pebble, [NAME])
    dns = DirectDns(pebble)
    # Before issuance: the self-signed certificate, which pebble's root does not sign.
    with pytest.raises(ssl.SSLCertVerificationError):
        served(certificate, NAME, pebble.root_pem())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(issuer.keep, NAME, dns)
        await wait_until(lambda: issuer.status(NAME)["certificate"] == "valid", "issuance")
        nursery.cancel_scope.cancel()
    leaf = served(certificate, NAME, pebble.root_pem())  # verified: no exception
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [NAME]
    # One challenge published at the right name, and cleaned up after.
    assert [d for d, _ in dns.published] == [f"_acme-challenge.{NAME}"]
    assert dns.cleaned == [NAME]
    status = issuer.status(NAME)
    assert status["certificate_error"] == ""
    assert status["certificate_expires"]
    assert 0 < issuer.days_left()[NAME] <= 1830
    # Keys stay on the node, 0600: the account key and the name's key with its chain.
    acme_dir = tmp_path / "data" / ACME_DIR
    for path in (acme_dir / "account-key.pem", acme_dir / f"{NAME}.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(acme_dir.stat().st_mode) == 0o700

    # A restart serves the stored certificate at once, without asking the CA.
    again, issuer2 = node_certificate(tmp_path, pebble, [NAME])
    pebble.stop_ca()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(issuer2.keep, NAME, dns)
        await wait_until(lambda: issuer2.status(NAME)["certificate"] == "valid", "the reload")
        nursery.cancel_scope.cancel()
    assert served(again, NAME, None).serial_number == leaf.serial_number
    assert len(dns.published) == 1


async def test_two_relay_domains_get_two_certificates(tmp_path, pebble):
    certificate, issuer = node_certificate(tmp_path, pebble, [NAME, OTHER])
    dns = DirectDns(pebble)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(issuer.keep, NAME, dns)
        nursery.start_soon(issuer.keep, OTHER, dns)
        await wait_until(
            lambda: all(issuer.status(n)["certificate"] == "valid" for n in (NAME, OTHER)),
            "both certificates",
        )
        nursery.cancel_scope.cancel()
    root = pebble.root_pem()
    first, second = served(certificate, NAME, root), served(certificate, OTHER, root)
    assert first.serial_number != second.serial_number


async def test_relays_sharing_a_domain_share_one_certificate(tmp_path, pebble):
    _, issuer = node_certificate(tmp_path, pebble, [NAME])
    one, two = DirectDns(pebble), DirectDns(pebble)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(issuer.keep, NAME, one)
        nursery.start_soon(issuer.keep, NAME, two)
        await wait_until(lambda: issuer.status(NAME)["certificate"] == "valid", "issuance")
        await trio.sleep(1)  # the second link had its turn at the name's lock
        nursery.cancel_scope.cancel()
    assert len(one.published) + len(two.published) == 1


async def test_bad_nonces_are_retried(tmp_path, caplog):
    # pebble rejects 30% of the nonces it gave (badNonce); issuance still succeeds at its
    # first attempt.
    caplog.set_level(logging.DEBUG, logger="acme.client")
    ca = Pebble(tmp_path / "pebble", nonce_reject=30).start()
    try:
        _, issuer = node_certificate(tmp_path, ca, [NAME])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(issuer.keep, NAME, DirectDns(ca))
            await wait_until(lambda: issuer.status(NAME)["certificate"] == "valid", "issuance")
            nursery.cancel_scope.cancel()
        assert issuer.names[NAME].failures == 0, issuer.names[NAME].error
        retried = [r for r in caplog.records if "Retrying request after error" in r.getMessage()]
        assert retried and "badNonce" in retried[0].getMessage()
    finally:
        ca.close()


async def test_a_failed_validation_is_logged_cleaned_up_and_retried_later(
    tmp_path, pebble, monkeypatch, caplog
):
    monkeypatch.setattr(issuer_module, "_RETRY_MIN", 1.0)  # seconds, not minutes, here
    certificate, issuer = node_certificate(tmp_path, pebble, [NAME])
    dns = DirectDns(pebble, wrong_value=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(issuer.keep, NAME, dns)
        await wait_until(
            lambda: NAME in issuer.names and issuer.names[NAME].failures >= 2, "two failed attempts"
        )
        status = issuer.status(NAME)
        assert status["certificate"] in ("retrying", "issuing")
        # The CA's problem document, as the CA wrote it.
        assert "urn:ietf:params:acme:error:" in issuer.names[NAME].error
        assert dns.cleaned and dns.cleaned[0] == NAME  # the record removed after failing
        dns.wrong_value = False  # the relay's DNS fixed: the next attempt succeeds
        await wait_until(lambda: issuer.status(NAME)["certificate"] == "valid", "issuance")
        nursery.cancel_scope.cancel()
    assert issuer.names[NAME].failures == 0
    assert issuer.status(NAME)["certificate_error"] == ""
    failures = [r for r in caplog.records if r.getMessage() == "certificate issuance failed"]
    assert failures and "urn:ietf:params:acme:error:" in failures[0].error
    # Backoff: never a tight loop (two failures at least ~0.5 s apart with a 1 s minimum).
    served(certificate, NAME, pebble.root_pem())


async def test_renewal_at_two_thirds_and_a_ca_down_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(issuer_module, "_RETRY_MIN", 1.0)
    ca = Pebble(tmp_path / "pebble", validity_s=15).start()
    try:
        certificate, issuer = node_certificate(tmp_path, ca, [NAME])
        dns = DirectDns(ca)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(issuer.keep, NAME, dns)
            await wait_until(lambda: issuer.status(NAME)["certificate"] == "valid", "issuance")
            state = issuer.names[NAME]
            first = state.issued
            assert first is not None and state.renew_at is not None
            lifetime = first.not_after - first.not_before
            assert abs((state.renew_at - first.not_before) - lifetime * 2 / 3) < datetime.timedelta(
                seconds=1
            )
            root = ca.root_pem()
            # The CA goes down before the renewal time: the attempt fails, is retried,
            # and the first certificate goes on serving.
            ca.stop_ca()
            await wait_until(lambda: state.failures >= 2, "failed renewals", within=40)
            assert state.issued is first
            assert served(certificate, NAME, root).serial_number == int(
                x509.load_pem_x509_certificate(first.chain_pem).serial_number
            )
            assert issuer.status(NAME)["certificate_error"]
            ca.start_ca()
            await wait_until(lambda: state.issued is not first and not state.failures, "renewal")
            nursery.cancel_scope.cancel()
        renewed = served(certificate, NAME, ca.root_pem())
        assert (
            renewed.serial_number != x509.load_pem_x509_certificate(first.chain_pem).serial_number
        )
    finally:
        ca.close()


async def test_a_rate_limit_is_waited_out_as_the_ca_says(tmp_path, pebble, monkeypatch):
    # pebble 2.4 never rate-limits: the front (tests/pebble/front.py) refuses the orders
    # with a 429 `rateLimited` and `Retry-After: 4`, as Let's Encrypt does; the rest is
    # pebble's. The backoff alone would try again within 0.25-0.5 s.
    monkeypatch.setattr(issuer_module, "_RETRY_MIN", 0.5)
    front = AcmeFront(pebble).start()
    front.refuse_orders = 4
    try:
        _, issuer = node_certificate(tmp_path, pebble, [NAME], directory=front.directory_url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(issuer.keep, NAME, DirectDns(pebble))
            await wait_until(
                lambda: NAME in issuer.names and issuer.names[NAME].failures == 1, "the refusal"
            )
            status = issuer.status(NAME)
            assert status["certificate"] == "retrying"
            # The next attempt is shown, as the CA said (to the second).
            next_at = datetime.datetime.fromisoformat(status["certificate_next"])
            assert next_at - front.refused[0] >= datetime.timedelta(seconds=3)
            assert status["certificate_error"] == (
                "urn:ietf:params:acme:error:rateLimited: too many certificates (front)"
                " (Retry-After 4 s)"
            )
            await wait_until(lambda: len(front.refused) == 2, "the second attempt", within=15)
            front.refuse_orders = None  # the limit is over
            await wait_until(lambda: issuer.status(NAME)["certificate"] == "valid", "issuance")
            nursery.cancel_scope.cancel()
        gap = (front.refused[1] - front.refused[0]).total_seconds()
        assert gap >= 4.0, gap
        assert len(front.refused) == 2  # and not asked again before its time
        assert issuer.names[NAME].failures == 0
    finally:
        front.close()


def ari_id(chain_pem: bytes) -> str:
    """RFC 9773 §4.1: the certificate's identifier, base64url(AKI keyIdentifier) "."
    base64url(serial's DER bytes), written here from the RFC."""
    leaf = x509.load_pem_x509_certificate(chain_pem)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = leaf.serial_number.to_bytes((leaf.serial_number.bit_length() + 8) // 8, "big")

    def b64(data: bytes | None) -> str:
        return base64.urlsafe_b64encode(data or b"").decode().rstrip("=")

    return f"{b64(aki.key_identifier)}.{b64(serial)}"


async def test_the_renewal_window_is_read_again_and_renews_early_when_moved(tmp_path):
    # pebble 2.4 serves no renewal information: the front serves the window (the test
    # sets it), pebble issues. A 60 s certificate: the window is read again at most every
    # 3 s (a twentieth of the lifetime), here as often since the CA says 1 s.
    ca = Pebble(tmp_path / "pebble", validity_s=60).start()
    front = AcmeFront(ca).start()
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    front.window = (now + datetime.timedelta(seconds=45), now + datetime.timedelta(seconds=55))
    front.ari_retry_after = 1
    try:
        certificate, issuer = node_certificate(tmp_path, ca, [NAME], directory=front.directory_url)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(issuer.keep, NAME, DirectDns(ca))
            await wait_until(lambda: issuer.status(NAME)["certificate"] == "valid", "issuance")
            state = issuer.names[NAME]
            first = state.issued
            assert first is not None and state.renew_at is not None
            first_id = ari_id(first.chain_pem)
            # Read after issuance, for this certificate; the renewal time is in the window.
            await wait_until(lambda: len(front.ari_asked) >= 1, "the window read")
            assert front.ari_asked[0][1] == first_id
            assert front.window[0] <= state.renew_at <= front.window[1]
            assert issuer.status(NAME)["certificate_next"] == state.renew_at.isoformat(
                timespec="seconds"
            )
            # Read again while the certificate is held, no oftener than every 3 s.
            await wait_until(lambda: len(front.ari_asked) >= 3, "the window read again", 15)
            times = [when for when, _ in front.ari_asked[:3]]
            assert all((b - a).total_seconds() >= 2.9 for a, b in itertools.pairwise(times)), times
            # The CA moves this certificate's window into the past (a revocation, say):
            # the node renews at its next read, well before the old window.
            moved = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
            front.windows[first_id] = (
                moved - datetime.timedelta(seconds=10),
                moved - datetime.timedelta(seconds=5),
            )
            await wait_until(lambda: state.issued is not first, "the early renewal", within=15)
            renewed_at = datetime.datetime.now(datetime.UTC)
            # The new certificate is installed first, its window read after: wait for it.
            await wait_until(lambda: state.window is not None, "the new window read", 15)
            nursery.cancel_scope.cancel()
        assert renewed_at < front.window[0], (renewed_at, front.window)
        renewed = served(certificate, NAME, ca.root_pem())
        assert (
            renewed.serial_number != x509.load_pem_x509_certificate(first.chain_pem).serial_number
        )
        # The new certificate's window is the CA's usual one, asked for by its own id.
        assert state.issued is not None and state.window == front.window
        assert front.ari_asked[-1][1] == ari_id(state.issued.chain_pem)
    finally:
        front.close()
        ca.close()
