"""The conformance suite (`gate conformance`) in CI: against a Gate node serving the real
llama.cpp engine, against a Gate relay (without a DNS backend, and publishing to a real
pebble-challtestsrv), against the independent reference node
(tests/e2e/test_reference_node.py), against an endpoint that only echoes, and against
Gate's RelayControl server with faults put in, to show the suite can tell them apart. A
failure names each failing case id with its evidence."""

from __future__ import annotations

import contextlib
import json
import re
import xml.etree.ElementTree as ET

import pytest
import trio

from gate.conformance import Outcome, Role, Target, run_cases, select
from gate.identity import NodeIdentity
from gate.protocol import DnsChallenge, ErrorCode, NodeId, RelayError, RelayPayload, StreamType
from gate.services.engines.client import UpstreamClient
from gate.services.p2p.dispatch import Opener, Route, StreamDispatch
from gate.services.relay.control import RelayControlServer
from gate.services.relay.dns.challenges import ChallengeRecords, RateLimited
from gate.services.relay.dns.challtestsrv import ChalltestsrvBackend
from gate.services.relay.registry import NameRegistry
from gate.services.transport.quic import Connection, TransportError, bind_endpoint
from tests.pebble.challtestsrv import Challtestsrv

from . import test_peers
from .gate_process import p2p_address, relay_env, relay_serve, run_gate
from .test_peers import start

make_node = test_peers.make_node  # the fixture: nodes with their own dirs and UDP ports

pytestmark = pytest.mark.e2e


def conformance(*args: str, env: dict[str, str], timeout: float = 600):
    return run_gate(
        "conformance", *args, "--bind-host", "127.0.0.1", "--json", env=env, timeout=timeout
    )


def failures(result) -> str:
    """Each failing case: its id, what went wrong, and the evidence."""
    try:
        cases = json.loads(result.stdout)
    except ValueError:
        return result.stdout.decode() + result.stderr.decode()
    lines = []
    for c in cases:
        if c["outcome"] == "fail":
            lines += [f"{c['id']}: {c['detail']}", *(f"    {e}" for e in c["evidence"])]
    return "\n".join(lines) or result.stderr.decode()


def outcomes(result) -> dict[str, str]:
    return {c["id"]: c["outcome"] for c in json.loads(result.stdout)}


@pytest.fixture
def tester_key(make_node, tmp_path):
    """A node that is never started: its exported key is the runner's trusted identity."""
    tester = make_node("tester")
    key = tmp_path / "tester.pem"
    exported = run_gate("identity", "export", "-o", str(key), env=tester.env)
    assert exported.returncode == 0, exported.stderr
    return tester, key


def test_a_gate_node_passes_every_node_case(make_node, tester_key, llama_engine, tmp_path):
    """MUSTs and SHOULDs (--strict), with a trusted key, a JUnit report written."""
    tester, key = tester_key
    node = start(make_node("a"), trust=[tester], engine=llama_engine)
    junit = tmp_path / "node.xml"
    result = conformance(
        node.address, "--identity", str(key), "--strict", "--junit", str(junit), env=node.env
    )
    assert result.returncode == 0, failures(result)
    got = outcomes(result)
    every = {c.id for c in select(Role.NODE, strict=True)}
    assert set(got) == every
    assert all(outcome == "pass" for outcome in got.values()), got
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    assert int(suite.get("tests", "0")) == len(every) >= 60


def test_a_stranger_runs_the_untrusted_cases_and_skips_the_rest(make_node):
    node = start(make_node("a"), trust=[])
    result = conformance(node.address, env=node.env)
    assert result.returncode == 0, failures(result)
    cases = json.loads(result.stdout)
    trusted = {c.id for c in select(Role.NODE) if c.trusted}
    for c in cases:
        expected = "skip" if c["id"] in trusted else "pass"
        assert c["outcome"] == expected, c
    skipped = [c for c in cases if c["outcome"] == "skip"]
    assert skipped and all("--identity" in c["detail"] for c in skipped)


@pytest.fixture(params=["no-dns", "challtestsrv"])
def relay(request, tmp_path, gate_env):
    """A Gate relay: one without a DNS backend (dns_challenge answered ok=false), one that
    publishes to a real pebble-challtestsrv (ok=true, rate-limited at 6 a minute)."""
    env = {
        **relay_env(gate_env, "relay.test", tmp_path / "relay-data"),
        "GATE_RELAYD_HELLO_TIMEOUT": "3",
    }
    with contextlib.ExitStack() as stack:
        if request.param == "challtestsrv":
            dns = stack.enter_context(Challtestsrv())
            env |= {"GATE_RELAYD_DNS__BACKEND": "challtestsrv", "GATE_RELAYD_DNS__URL": dns.url}
        server = relay_serve(env)
        server.start()
        stack.callback(server.close)
        yield server, p2p_address(server), env, request.param


def test_a_gate_relay_passes_every_relay_case(relay, tmp_path):
    """Every case passes, but a relay that publishes no DNS records has no rate limit to
    show (§6.4): its two rate-limit cases are skipped, and say why."""
    server, address, env, dns = relay
    junit = tmp_path / "relay.xml"
    result = conformance(
        address,
        "--role",
        "relay",
        "--front",
        server.url,
        "--strict",
        "--junit",
        str(junit),
        env=env,
    )
    assert result.returncode == 0, failures(result)
    cases = {c["id"]: c for c in json.loads(result.stdout)}
    assert set(cases) == {c.id for c in select(Role.RELAY, strict=True)}
    rate_cases = {"relay/6.4/8", "relay/6.4/9"}
    for case_id, c in cases.items():
        expected = "skip" if dns == "no-dns" and case_id in rate_cases else "pass"
        assert c["outcome"] == expected, c
    published = cases["relay/6.4/1"]["detail"]
    if dns == "no-dns":
        assert published.count("ok=False this relay publishes no DNS records") == 2, published
        assert "published none of 8" in cases["relay/6.4/8"]["detail"]
    else:  # 6.3/6 and 6.4/1 took 3 of the 6 tokens (one comes back every 10 s)
        assert published == "dns_challenge_response ok=True; dns_challenge_response ok=True"
        limited = re.fullmatch(
            r"RATE_LIMITED at request (\d) \((\d) published before it\)",
            cases["relay/6.4/8"]["detail"],
        )
        assert limited and 4 <= int(limited[1]) <= 6 and int(limited[2]) == int(limited[1]) - 1
        assert cases["relay/6.4/9"]["detail"].startswith("RATE_LIMITED at request ")


def test_bad_input_is_refused_clearly(make_node):
    node = make_node("a")
    no_address = conformance(node.node_id, env=node.env)
    assert no_address.returncode == 2 and b"NODE_ID@HOST:PORT" in no_address.stderr
    garbage = conformance("not-a-node@127.0.0.1:9", env=node.env)
    assert garbage.returncode == 2 and b"not-a-node" in garbage.stderr
    missing_key = conformance(node.address, "--identity", "/nonexistent.pem", env=node.env)
    assert missing_key.returncode == 2 and b"/nonexistent.pem" in missing_key.stderr
    no_case = conformance(node.address, "--cases", "42.1", env=node.env)
    assert no_case.returncode == 2 and b"42.1" in no_case.stderr
    unbindable = run_gate(
        "conformance", node.address, "--bind-host", "192.0.2.1", env=node.env, timeout=60
    )
    assert unbindable.returncode == 1
    assert unbindable.stderr.startswith(b"gate: error:") and b"Traceback" not in unbindable.stderr


async def test_an_endpoint_that_only_echoes_fails_the_suite():
    """An endpoint with Gate's ALPN that echoes every stream: no preamble checks, no
    handshakes. The suite must say so, case by case."""
    echo = await bind_endpoint(NodeIdentity.generate().secret_key_bytes, host="127.0.0.1")

    async def serve(conn: Connection) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await conn.accept_stream()
                except TransportError:
                    return
                nursery.start_soon(echo_stream, stream)

    async def echo_stream(stream) -> None:
        with contextlib.suppress(TransportError, trio.BrokenResourceError):
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        with contextlib.suppress(TransportError, trio.BrokenResourceError):
            await stream.aclose()

    cases = select(Role.NODE, only="2.2,3.1,3.2/1,3.3/1,3.4/1,5.4/1,5.5/1,7.1/1")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(echo.serve, serve)
            target = Target(NodeId(echo.node_id.bytes), echo.direct_addresses)
            results = await run_cases(
                target, cases, identity=NodeIdentity.generate(), host="127.0.0.1"
            )
            nursery.cancel_scope.cancel()
    finally:
        await echo.aclose()
    got = {r.case.id: r.outcome for r in results}
    assert got.pop("node/2.2/1") is Outcome.PASS
    assert got.pop("node/3.1/4") is Outcome.FAIL  # echoes the preamble, does not reject it
    assert set(got.values()) - {Outcome.FAIL} <= {Outcome.PASS}
    failed = [case_id for case_id, outcome in got.items() if outcome is Outcome.FAIL]
    assert set(failed) >= {
        "node/3.1/1",
        "node/3.1/2",
        "node/3.1/3",
        "node/3.2/1",
        "node/3.3/1",
        "node/3.4/1",
        "node/5.4/1",
        "node/5.5/1",
        "node/7.1/1",
    }


class _RateFirst(RelayControlServer):
    """A relay that breaks §6.4's order: the node's rate before its name."""

    async def answer(self, remote: NodeId, request: RelayPayload) -> RelayPayload:
        if isinstance(request, DnsChallenge):
            try:
                self.challenges.admit(remote)
            except RateLimited as exc:
                return RelayError(code=ErrorCode.RATE_LIMITED, message=str(exc))
        return await super().answer(remote, request)


@pytest.mark.parametrize(
    ("server", "per_minute", "expected"),
    [
        (RelayControlServer, 6, {"relay/6.4/8": Outcome.PASS, "relay/6.4/9": Outcome.PASS}),
        (_RateFirst, 6, {"relay/6.4/8": Outcome.PASS, "relay/6.4/9": Outcome.FAIL}),
        (RelayControlServer, 1000, {"relay/6.4/8": Outcome.FAIL, "relay/6.4/9": Outcome.SKIP}),
    ],
    ids=["as-specified", "rate-before-name", "no-limit"],
)
async def test_the_dns_challenge_cases_tell_a_wrong_relay(server, per_minute, expected, tmp_path):
    """Gate's own RelayControl server in-process over iroh, publishing to a real
    challtestsrv, as specified and with two faults put in: the rate checked before the
    name (§6.4's order), and no rate limit (a SHOULD). The §6.4 cases see each."""
    cases = select(Role.RELAY, strict=True, only="6.4")
    registry = NameRegistry.open(tmp_path / "relay.db")
    relay = await bind_endpoint(NodeIdentity.generate().secret_key_bytes, host="127.0.0.1")
    try:
        with Challtestsrv() as dns:
            client = UpstreamClient()
            async with contextlib.aclosing(client), trio.open_nursery() as nursery:
                records = ChallengeRecords(
                    ChalltestsrvBackend(dns.url, client), lifetime=600, per_minute=per_minute
                )
                await nursery.start(records.run)
                control = server("relay.test", registry, records)
                dispatch = StreamDispatch(
                    {StreamType.RELAY_CONTROL: Route(Opener.ANY_NODE, control.serve)},
                    trusted=lambda _: False,
                )

                async def serve(conn: Connection) -> None:
                    async with trio.open_nursery() as streams:
                        while True:
                            try:
                                stream = await conn.accept_stream()
                            except TransportError:
                                return
                            streams.start_soon(dispatch.serve, conn, conn.remote_id, stream)

                await nursery.start(relay.serve, serve)
                target = Target(NodeId(relay.node_id.bytes), relay.direct_addresses)
                results = await run_cases(target, cases, host="127.0.0.1")
                nursery.cancel_scope.cancel()
    finally:
        await relay.aclose()
        registry.close()
    got = {r.case.id: r for r in results}
    assert {case_id: got[case_id].outcome for case_id in expected} == expected, [
        (r.case.id, r.outcome, r.detail) for r in results
    ]
    others = [r for r in results if r.case.id not in expected]
    assert len(others) == 7 and all(r.outcome is Outcome.PASS for r in others)
    if server is _RateFirst:
        assert "expected error 300" in got["relay/6.4/9"].detail
