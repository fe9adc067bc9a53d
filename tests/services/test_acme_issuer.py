"""The issuer's failures without a CA (gate.services.acme.issuer): nothing listening at
the directory's address (a closed loopback port), or the library raising what nobody
expected (monkeypatched: no real CA fails that way on purpose). Each is one failed
attempt, recorded and retried after the backoff, never a crash of the relay link and
never a tight loop. Issuance against a real CA: tests/e2e/test_acme.py."""

from __future__ import annotations

import datetime
import subprocess
import sys

import trio

from gate.config import TlsConfig
from gate.services.acme import issuer as issuer_module
from gate.services.acme.issuer import AcmeIssuer
from gate.services.acme.session import AcmeSession
from gate.services.http.tls import NodeCertificate

NAME = "n.relay.test"
NOWHERE = "https://127.0.0.1:9/dir"  # nothing listens on the discard port


class NoRelay:
    """Never reached: these attempts fail before any challenge."""

    async def publish(self, domain: str, txt_value: str) -> None:
        raise AssertionError("no challenge expected")

    async def done(self, name: str) -> None:
        raise AssertionError("no challenge expected")


def issuer(tmp_path) -> AcmeIssuer:
    config = TlsConfig(acme_directory=NOWHERE)
    certificate = NodeCertificate(config, tmp_path)
    certificate.cover([NAME])
    return AcmeIssuer(config, tmp_path, certificate)


async def run_until(issuer: AcmeIssuer, failures: int) -> list[datetime.datetime]:
    """Keep NAME until `failures` attempts failed; the time of each failure."""
    seen: list[datetime.datetime] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(issuer.keep, NAME, NoRelay())
            while len(seen) < failures:
                await trio.sleep(0.01)
                state = issuer.names.get(NAME)
                if state is not None and state.failures > len(seen):
                    seen.append(datetime.datetime.now(datetime.UTC))
            nursery.cancel_scope.cancel()
    return seen


async def test_an_unreachable_ca_is_a_failure_retried_with_backoff(tmp_path, monkeypatch):
    monkeypatch.setattr(issuer_module, "_RETRY_MIN", 0.2)
    keeper = issuer(tmp_path)
    times = await run_until(keeper, 3)
    state = keeper.names[NAME]
    assert "ConnectionError" in state.error
    status = keeper.status(NAME)
    assert status["certificate"] == "retrying" and status["certificate_next"]
    assert keeper.failures() == {NAME: 3.0}
    # Half to all of 0.2 s, then of 0.4 s: never a tight loop.
    assert (times[1] - times[0]).total_seconds() >= 0.09
    assert (times[2] - times[1]).total_seconds() >= 0.19


async def test_a_surprise_from_the_library_is_a_failure_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(issuer_module, "_RETRY_MIN", 0.05)

    def broken(self: AcmeSession) -> None:
        raise TypeError("a bug in the library")

    monkeypatch.setattr(AcmeSession, "open", broken)
    keeper = issuer(tmp_path)
    await run_until(keeper, 2)
    assert keeper.names[NAME].error == "TypeError: a bug in the library"


def test_a_node_without_acme_loads_none_of_its_libraries():
    """The ACME library and its HTTP stack cost a node ~11 MB and ~0.17 s at start: a
    node imports them at its first issuance, not before (a fresh interpreter, as
    `gate serve` starts)."""
    heavy = ("acme", "josepy", "requests", "OpenSSL")
    script = (
        "import sys, gate.node, gate.services.p2p.relay_client, gate.services.acme.issuer\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "[]"
