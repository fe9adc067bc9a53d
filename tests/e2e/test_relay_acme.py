"""A node's certificate from a real ACME CA through a real relay, end to end: pebble and
pebble-challtestsrv (tests/pebble), `gate relay serve` with its challtestsrv DNS
backend, and `gate serve` with no certificate files, as separate processes on loopback.
The node registers, serves its self-signed certificate at once, and in the background
orders one from pebble: the relay publishes the DNS-01 record in challtestsrv, pebble
checks it there, the node installs the certificate. Clients that trust pebble's root
alone (a Python HTTPS client, headless Chromium with pebble's root in its NSS database)
then reach the API through the relay with no certificate error."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from tests.pebble.ca import Pebble, have_pebble
from tests.pebble.challtestsrv import Challtestsrv

from .conftest import engine_config
from .gate_process import (
    GateServe,
    free_port,
    p2p_address,
    relay_env,
    relay_serve,
    run_gate,
    wait_for,
)
from .test_gateway import HI, MODEL, NO_EOS
from .test_relay import NOWHERE, RelayedHTTPS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have_pebble(), reason="scripts/system-deps.sh installs pebble"),
]

DOMAIN = "relay.test"
OTHER_DOMAIN = "other.test"


class Relay:
    """`gate relay serve` for `domain`, publishing challenges in `dns`'s challtestsrv."""

    def __init__(self, tmp: Path, gate_env: dict[str, str], domain: str, dns_url: str) -> None:
        self.domain = domain
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.env = {
            **relay_env(
                gate_env,
                domain,
                tmp / f"relay-{domain}",
                listen=f"127.0.0.1:{self.tcp_port}",
                p2p_port=free_port(socket.SOCK_DGRAM),
            ),
            "GATE_RELAYD_DNS__BACKEND": "challtestsrv",
            "GATE_RELAYD_DNS__URL": dns_url,
        }
        self.proc: GateServe | None = None
        self.address = ""

    def start(self) -> Relay:
        self.proc = relay_serve(self.env).start()
        self.address = p2p_address(self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None

    @property
    def port(self) -> tuple[str, int]:
        return ("127.0.0.1", self.tcp_port)


class AcmeWorld:
    """pebble, one relay per domain, and a node registered with each, issued by pebble."""

    def __init__(
        self,
        tmp: Path,
        gate_env: dict[str, str],
        engine_url: str | None,
        *,
        domains: tuple[str, ...] = (DOMAIN,),
        validity_s: int = 0,
        va_sleep_s: int = 0,
    ) -> None:
        self.tmp = tmp
        self.pebble = Pebble(tmp / "pebble", validity_s=validity_s, va_sleep_s=va_sleep_s)
        self.pebble.start()
        assert self.pebble.dns is not None
        self.relays = [
            Relay(tmp, gate_env, d, self.pebble.challtestsrv_url).start() for d in domains
        ]
        self.node_env = {**gate_env, "GATE_P2P__PORT": str(free_port(socket.SOCK_DGRAM))}
        shown = run_gate("identity", "show", "--json", env=self.node_env)
        self.node_id = json.loads(shown.stdout)["node_id"]
        created = run_gate(
            "keys", "create", "acme", "--json", env={**self.node_env, "GATE_SERVER__BIND": NOWHERE}
        )
        assert created.returncode == 0, created.stderr
        self.key = json.loads(created.stdout)["key"]
        self.engine_url = engine_url
        self.node: GateServe | None = None

    def hostname(self, relay: Relay | None = None) -> str:
        return f"{self.node_id}.{(relay or self.relays[0]).domain}"

    def start_node(self) -> None:
        config = engine_config(self.engine_url) if self.engine_url else "[security]\n"
        servers = [r.address for r in self.relays]
        config += (
            f"[relay]\nenabled = true\nservers = {json.dumps(servers)}\n"
            f"[tls]\nacme_directory = {json.dumps(self.pebble.directory_url)}\n"
            f"acme_ca_bundle = {json.dumps(str(self.pebble.ca_bundle))}\n"
            'acme_email = "ops@example.com"\n'
        )
        self.node = GateServe(self.node_env, config=config).start()

    def context(self) -> ssl.SSLContext:
        """A client that trusts pebble's current root, and nothing else."""
        return ssl.create_default_context(cadata=self.pebble.root_pem())

    def peer_cert(self, relay: Relay | None = None, context: ssl.SSLContext | None = None):
        """The certificate a new connection through the relay gets (None: no TLS yet)."""
        relay = relay or self.relays[0]
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = RelayedHTTPS(self.hostname(relay), relay.port, context)
        try:
            conn.connect()
            der = conn.sock.getpeercert(binary_form=True)
        except (ssl.SSLError, OSError):
            return None
        finally:
            conn.close()
        return x509.load_der_x509_certificate(der)

    def issued(self, relay: Relay | None = None) -> x509.Certificate | None:
        """The certificate through `relay` once pebble issued it (verified by a client
        that trusts pebble's root), else None."""
        return self.peer_cert(relay, self.context())

    def request(self, method: str, path: str, body: dict | None = None, relay=None):
        relay = relay or self.relays[0]
        conn = RelayedHTTPS(self.hostname(relay), relay.port, self.context())
        headers = {"Authorization": f"Bearer {self.key}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, data

    def relay_status(self) -> list[dict[str, str]]:
        """`relays` of the node's own /health (its loopback listener)."""
        return json.loads(self.local("/health"))["relays"]

    def metrics(self) -> str:
        return self.local("/metrics").decode()

    def local(self, path: str) -> bytes:
        assert self.node is not None
        with urllib.request.urlopen(f"{self.node.url}{path}", timeout=10) as response:
            return response.read()

    def close(self) -> None:
        if self.node is not None:
            self.node.close()
        for relay in self.relays:
            relay.stop()
        self.pebble.close()


@pytest.fixture
def acme_world(tmp_path, gate_env, llama_engine):
    world = AcmeWorld(tmp_path, gate_env, llama_engine)
    try:
        yield world
    finally:
        world.close()


def test_a_node_gets_a_trusted_certificate_through_the_relay(acme_world):
    w = acme_world
    started = time.monotonic()
    w.start_node()
    # Registration does not wait for the CA: the self-signed certificate serves first
    # (or the CA was quicker than this check).
    wait_for(lambda: w.peer_cert() is not None, "the node's name routed", timeout=30)
    leaf = wait_for(w.issued, "a certificate pebble issued, served through the relay", 60)
    print(f"first trusted HTTPS answer {time.monotonic() - started:.2f} s after the node's start")
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [w.hostname()]

    status, body = w.request("GET", "/v1/models")
    assert status == 200, body
    assert MODEL in {m["id"] for m in json.loads(body)["data"]}
    request = {"model": MODEL, "messages": HI, "max_tokens": 8, "stream": True}
    status, body = w.request("POST", "/v1/chat/completions", {**request, "logit_bias": NO_EOS})
    assert status == 200
    events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"

    # Visible: /health and the node's status (gate status), and metrics.
    (relay,) = w.relay_status()
    assert relay["state"] == "registered" and relay["certificate"] == "valid", relay
    expires = datetime.datetime.fromisoformat(relay["certificate_expires"])
    assert expires == leaf.not_valid_after_utc
    assert relay["certificate_error"] == ""
    metrics = w.metrics()
    assert f'gate_certificate_expiry_days{{domain="{w.hostname()}"}}' in metrics
    node_config = Path(w.node_env["XDG_CONFIG_HOME"]) / "gate-test.toml"
    shown = run_gate("status", "--config", str(node_config), env=w.node_env)
    assert shown.returncode == 0, shown.stderr
    assert "certificate valid, expires" in shown.stdout.decode(), shown.stdout

    # The relay removed the TXT record once the node activated its name again.
    dns = w.pebble.dns
    assert dns is not None
    challenge = f"_acme-challenge.{w.hostname()}"
    wait_for(lambda: dns.txt(challenge) == [], "the challenge record removed", 15)

    # The keys never left the data dir, 0600.
    data_dir = Path(w.node_env["XDG_DATA_HOME"]) / "gate" / "acme"
    for path in data_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_chromium_trusting_pebbles_root_streams_a_chat_completion(acme_world, tmp_path):
    """Headless Chromium with pebble's root in its own NSS database (certutil, in a home
    of its own): the same trust a browser has in Let's Encrypt's root, and no flag that
    skips a certificate check."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    from .test_ui import CHROMIUM, LAUNCH_ARGS

    if not CHROMIUM.exists() or shutil.which("certutil") is None:
        pytest.skip("needs chromium and certutil (scripts/system-deps.sh installs both)")
    w = acme_world
    w.start_node()
    wait_for(w.issued, "a certificate pebble issued", 60)
    home = tmp_path / "browser-home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    root = tmp_path / "pebble-root.pem"
    root.write_text(w.pebble.root_pem())
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", "pebble", "-t", "C,,", "-i", str(root)],
        check=True,
    )
    relay = w.relays[0]
    args = [a for a in LAUNCH_ARGS if not a.startswith("--host-resolver-rules")] + [
        f"--host-resolver-rules=MAP {w.hostname()} 127.0.0.1",
    ]
    origin = f"https://{w.hostname()}:{relay.tcp_port}"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=args, env={**os.environ, "HOME": str(home)}
        )
        try:
            page = browser.new_page()
            response = page.goto(f"{origin}/health", timeout=20_000)
            assert response is not None and response.status == 200
            security = response.security_details()
            assert security is not None and security["subjectName"] == w.hostname()
            status, body = page.evaluate(
                """async ([key]) => {
                    const headers = {Authorization: 'Bearer ' + key};
                    const r = await fetch('/v1/models', {headers});
                    return [r.status, await r.json()];
                }""",
                [w.key],
            )
            assert status == 200 and MODEL in {m["id"] for m in body["data"]}, body
            chunks = page.evaluate(
                """async ([key, request]) => {
                    const r = await fetch('/v1/chat/completions', {
                        method: 'POST', body: JSON.stringify(request),
                        headers: {
                            Authorization: 'Bearer ' + key, 'Content-Type': 'application/json',
                        },
                    });
                    const reader = r.body.getReader();
                    const decoder = new TextDecoder();
                    let text = '', reads = 0;
                    for (;;) {
                        const {done, value} = await reader.read();
                        if (done) break;
                        reads += 1;
                        text += decoder.decode(value, {stream: true});
                    }
                    return [r.status, reads, text];
                }""",
                [
                    w.key,
                    {
                        "model": MODEL,
                        "messages": HI,
                        "max_tokens": 8,
                        "stream": True,
                        "logit_bias": NO_EOS,
                    },
                ],
            )
            status, reads, text = chunks
            assert reads >= 1
            assert status == 200, text
            events = [line for line in text.splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]" and len(events) >= 9, text
        finally:
            browser.close()


def serial(cert: x509.Certificate | None) -> int | None:
    return cert.serial_number if cert is not None else None


@pytest.fixture
def short_lived(tmp_path, gate_env, llama_engine):
    """A world whose certificates live 15 s: renewed every 10 s or so."""
    world = AcmeWorld(tmp_path, gate_env, llama_engine, validity_s=15)
    try:
        yield world
    finally:
        world.close()


def test_renewal_reaches_new_connections_while_an_open_one_keeps_its_certificate(short_lived):
    w = short_lived
    w.start_node()
    first = wait_for(w.issued, "the first certificate", 60)
    context = w.context()
    relay = w.relays[0]
    kept = RelayedHTTPS(w.hostname(), relay.port, context)
    kept.request("GET", "/health", headers={"Authorization": f"Bearer {w.key}"})
    response = kept.getresponse()
    assert response.status == 200
    response.read()
    assert x509.load_der_x509_certificate(kept.sock.getpeercert(True)).serial_number == serial(
        first
    )

    # Renewed at two thirds of 15 s: a new connection gets the new certificate...
    renewed = wait_for(
        lambda: (c := w.issued()) is not None and c.serial_number != first.serial_number and c,
        "the renewed certificate",
        40,
    )
    assert renewed.not_valid_before_utc >= first.not_valid_before_utc
    # ...while the connection opened before streams on with the first one, no restart.
    response = kept.post_json(
        "/v1/chat/completions",
        {"model": MODEL, "messages": HI, "max_tokens": 8, "stream": True, "logit_bias": NO_EOS},
        w.key,
    )
    assert response.status == 200
    events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert x509.load_der_x509_certificate(kept.sock.getpeercert(True)).serial_number == serial(
        first
    )
    kept.close()
    assert w.node is not None and w.node.proc is not None and w.node.proc.poll() is None


def test_a_ca_down_at_renewal_is_retried_and_the_old_certificate_keeps_serving(short_lived):
    w = short_lived
    w.start_node()
    first = wait_for(w.issued, "the first certificate", 60)
    w.pebble.stop_ca()
    # The renewal fails, visibly, and is retried with backoff.
    failed = wait_for(
        lambda: (r := w.relay_status()[0]).get("certificate_error") and r, "a failed renewal", 40
    )
    assert failed["certificate"] in ("retrying", "renewing"), failed
    assert failed["certificate_next"]
    assert serial(w.peer_cert()) == serial(first)  # still the first certificate
    wait_for(
        lambda: f'gate_certificate_failures{{domain="{w.hostname()}"}} 2' in w.metrics(),
        "a second failed attempt",
        60,
    )
    assert serial(w.peer_cert()) == serial(first)
    assert w.node is not None and "certificate issuance failed" in w.node.stderr()
    # The CA back: the next retry renews.
    w.pebble.start_ca()
    wait_for(
        lambda: (c := w.issued()) is not None and c.serial_number != first.serial_number,
        "the renewal once the CA is back",
        60,
    )
    status = w.relay_status()[0]
    assert status["certificate"] in ("valid", "renewing"), status


def test_a_failed_validation_is_cleaned_up_and_retried(acme_world):
    """pebble asks a DNS server where the relay published nothing: validation fails. The
    relay removes its record, the node retries later, and once pebble asks the relay's
    DNS the certificate comes."""
    w = acme_world
    elsewhere = Challtestsrv().start()
    try:
        w.pebble.stop_ca()
        w.pebble.start_ca(dns_address=elsewhere.dns_address)
        w.start_node()
        failed = wait_for(
            lambda: (r := w.relay_status()[0]).get("certificate_error") and r,
            "a failed validation",
            40,
        )
        assert "validation failed" in failed["certificate_error"], failed
        assert "urn:ietf:params:acme:error:" in failed["certificate_error"], failed
        dns = w.pebble.dns
        assert dns is not None
        challenge = f"_acme-challenge.{w.hostname()}"
        wait_for(lambda: dns.txt(challenge) == [], "the record removed after the failure", 15)
        # Registration did not wait for the CA: the name is served all along, with the
        # self-signed certificate, which pebble's root does not sign.
        assert w.peer_cert() is not None
        assert w.issued() is None
        w.pebble.stop_ca()
        w.pebble.start_ca()
        wait_for(w.issued, "the certificate at a later attempt", 60)
        wait_for(lambda: dns.txt(challenge) == [], "the record removed after success", 15)
    finally:
        elsewhere.close()


def test_two_relays_with_different_domains_give_two_certificates(tmp_path, gate_env):
    w = AcmeWorld(tmp_path, gate_env, None, domains=(DOMAIN, OTHER_DOMAIN))
    try:
        w.start_node()
        one, two = w.relays
        first = wait_for(lambda: w.issued(one), "the first relay's certificate", 60)
        second = wait_for(lambda: w.issued(two), "the second relay's certificate", 60)
        assert first.serial_number != second.serial_number
        for cert, relay in ((first, one), (second, two)):
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert names.get_values_for_type(x509.DNSName) == [w.hostname(relay)]
        statuses = w.relay_status()
        assert [s["certificate"] for s in statuses] == ["valid", "valid"], statuses
        # Relays share no state: one stopped, the other goes on serving its name.
        one.stop()
        assert serial(w.issued(two)) == second.serial_number
    finally:
        w.close()


def test_a_relay_restarted_during_issuance(tmp_path, gate_env):
    """The relay stops as soon as the challenge is published (pebble waits up to 5 s
    before it validates, so most runs stop it mid-issuance): the node's attempt ends
    with the link, the relay removes the record, and once the relay is back the node
    registers again and gets its certificate."""
    w = AcmeWorld(tmp_path, gate_env, None, va_sleep_s=5)
    try:
        w.start_node()
        dns = w.pebble.dns
        assert dns is not None
        challenge = f"_acme-challenge.{w.hostname()}"
        wait_for(lambda: dns.txt(challenge), "the challenge published", 30)
        relay = w.relays[0]
        relay.stop()
        wait_for(lambda: dns.txt(challenge) == [], "the record removed at the relay's stop", 15)
        relay.start()
        cert = wait_for(w.issued, "the certificate after the relay's restart", 90)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [w.hostname()]
        wait_for(lambda: dns.txt(challenge) == [], "no record left behind", 15)
        assert w.node is not None
        orders = w.node.stderr().count("certificate ordered")
        print(f"orders the node made around the relay's restart: {orders}")
    finally:
        w.close()
