"""The issuer's failures without a CA (gate.services.acme.issuer): nothing listening at
the directory's address (a closed loopback port), or the library raising what nobody
expected (monkeypatched: no real CA fails that way on purpose). Each is one failed
attempt, recorded and retried after the backoff, never a crash of the relay link and
never a tight loop. Issuance against a real CA: tests/e2e/test_acme.py."""

from __future__ import annotations

import datetime
import email.utils
import subprocess
import sys
from pathlib import Path

import requests
import trio

from gate.config import TlsConfig
from gate.services.acme import issuer as issuer_module
from gate.services.acme.issuer import AcmeIssuer
from gate.services.acme.session import AcmeSession
from gate.services.acme.store import Issued
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


def test_a_ca_refusal_is_waited_out_up_to_a_day(tmp_path):
    """A CA's Retry-After on a refusal sets the next attempt when it is longer than the
    backoff, never more than a day ahead (a rate limit against a real CA: e2e
    test_acme.py)."""
    keeper = issuer(tmp_path)
    state = keeper._state(NAME)
    now = datetime.datetime.now(datetime.UTC)
    keeper._failed(state, "rateLimited", refused=120.0)
    assert state.retry_at is not None
    assert 119 <= (state.retry_at - now).total_seconds() <= 121
    keeper._failed(state, "rateLimited", refused=30 * 86400.0)  # a month: a day at most
    assert 86399 <= (state.retry_at - now).total_seconds() <= 86401
    keeper._failed(state, "rateLimited", refused=0.0)  # no sooner than the backoff
    assert (state.retry_at - now).total_seconds() >= issuer_module._RETRY_MIN * 2**2 / 2


def test_the_renewal_window_is_read_again_within_bounds():
    """The CA's Retry-After on renewal information, bounded to an hour..a day (6 h when
    it gives none); the lower bound a twentieth of a short certificate's lifetime."""
    now = datetime.datetime.now(datetime.UTC)

    def again(lifetime: datetime.timedelta, retry_after: float | None) -> float:
        issued = Issued(NAME, Path("unused"), now, now + lifetime, b"")
        return (AcmeIssuer._window_again(issued, retry_after) - now).total_seconds()

    days90 = datetime.timedelta(days=90)
    assert 3599 <= again(days90, 60.0) <= 3601
    assert 4 * 3600 - 1 <= again(days90, 4 * 3600.0) <= 4 * 3600 + 1
    assert 86399 <= again(days90, 7 * 86400.0) <= 86401
    assert 6 * 3600 - 1 <= again(days90, None) <= 6 * 3600 + 1
    assert 2.9 <= again(datetime.timedelta(seconds=60), 1.0) <= 3.1


def test_retry_after_in_seconds_or_as_a_date():
    from gate.services.acme.session import retry_after_s

    def response(value: str | None) -> requests.Response:
        answer = requests.Response()
        if value is not None:
            answer.headers["Retry-After"] = value
        return answer

    assert retry_after_s(response("120")) == 120.0
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)
    seconds = retry_after_s(response(email.utils.format_datetime(later, usegmt=True)))
    assert seconds is not None and 7195 <= seconds <= 7201
    assert retry_after_s(response(None)) is None
    assert retry_after_s(response("soon")) is None
