"""The live conformance suite (`gate conformance`) against real nodes, and against a
node that does not speak the protocol, to show the suite can tell them apart."""

import contextlib
import json

import pytest
import trio

from gate.conformance import run_suite
from gate.identity import NodeIdentity
from gate.protocol import NodeId
from gate.services.transport.quic import Connection, TransportError, bind_endpoint

from . import test_peers
from .gate_process import run_gate
from .test_peers import start

make_node = test_peers.make_node  # the fixture: nodes with their own dirs and UDP ports

pytestmark = pytest.mark.e2e

UNTRUSTED_CHECKS = 7
TRUSTED_CHECKS = 4


def conformance(*args: str, env: dict[str, str]):
    return run_gate("conformance", *args, "--bind-host", "127.0.0.1", "--json", env=env)


def test_a_gate_node_passes_the_checks_a_stranger_can_run(make_node):
    node = start(make_node("a"), trust=[])
    result = conformance(node.address, env=node.env)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    checks = json.loads(result.stdout)
    assert [c["passed"] for c in checks] == [True] * UNTRUSTED_CHECKS + [None] * TRUSTED_CHECKS
    by_name = {c["name"]: c for c in checks}
    assert "error 300" in by_name["refuses an untrusted http_proxy stream"]["detail"]


def test_a_gate_node_passes_every_check_with_a_trusted_key(make_node, tmp_path):
    tester = make_node("tester")  # never started: only its key is used
    key = tmp_path / "tester.pem"
    exported = run_gate("identity", "export", "-o", str(key), env=tester.env)
    assert exported.returncode == 0, exported.stderr
    node = start(make_node("a"), trust=[tester])
    result = conformance(node.address, "--identity", str(key), env=node.env)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    checks = json.loads(result.stdout)
    assert [c["passed"] for c in checks] == [True] * (UNTRUSTED_CHECKS + TRUSTED_CHECKS)
    human = run_gate(
        "conformance",
        node.address,
        "--identity",
        str(key),
        "--bind-host",
        "127.0.0.1",
        env=node.env,
    )
    assert human.returncode == 0
    assert b"11 of 11 checks passed, 0 skipped" in human.stdout


def test_bad_input_is_refused_clearly(make_node):
    node = make_node("a")
    no_address = conformance(node.node_id, env=node.env)
    assert no_address.returncode == 2 and b"NODE_ID@HOST:PORT" in no_address.stderr
    garbage = conformance("not-a-node@127.0.0.1:9", env=node.env)
    assert garbage.returncode == 2 and b"not-a-node" in garbage.stderr
    missing_key = conformance(node.address, "--identity", "/nonexistent.pem", env=node.env)
    assert missing_key.returncode == 2 and b"/nonexistent.pem" in missing_key.stderr
    # An address this machine does not have: the suite's own endpoint cannot bind.
    unbindable = run_gate(
        "conformance", node.address, "--bind-host", "192.0.2.1", env=node.env, timeout=60
    )
    assert unbindable.returncode == 1
    assert unbindable.stderr.startswith(b"gate: error:") and b"Traceback" not in unbindable.stderr


async def test_a_node_that_only_echoes_fails_the_suite():
    """An endpoint with Gate's ALPN that echoes every stream: no preamble checks, no
    handshakes. The suite must say so, check by check."""
    echo = await bind_endpoint(NodeIdentity.generate().secret_key_bytes, host="127.0.0.1")

    async def serve(conn: Connection) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await conn.accept_stream()
                except TransportError:  # the suite closed this connection
                    return
                nursery.start_soon(echo_stream, stream)

    async def echo_stream(stream) -> None:
        with contextlib.suppress(TransportError, trio.BrokenResourceError):
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        await stream.aclose()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(echo.serve, serve)
            trusted = NodeIdentity.generate()
            results = await run_suite(
                NodeId(echo.node_id.bytes),
                echo.direct_addresses,
                identity=trusted,
                host="127.0.0.1",
            )
            nursery.cancel_scope.cancel()
    finally:
        await echo.aclose()
    passed = {r.name: r.passed for r in results}
    assert passed["connects with ALPN gate/1"] is True
    failing = [name for name, ok in passed.items() if ok is False]
    assert set(failing) >= {
        "refuses a bad preamble magic",
        "refuses an unsupported version",
        "refuses an unknown stream type",
        "refuses an untrusted handshake, with a reason",
        "refuses an untrusted http_proxy stream",
        "accepts a trusted handshake; ping, capabilities",
        "serves an http_proxy exchange",
        "refuses a frame over 1 MiB",
    }
