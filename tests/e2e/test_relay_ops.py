"""The relay's operations end to end, with the processes of tests/e2e/test_relay.py (a
relay and a node, a test CA, llama.cpp on the tiny model): the relay's status URL and
its /health and /metrics; the node showing its relay (state, reason, public URL) in
`gate status`, /health and node_status; 200 concurrent connections with streamed
answers, none lost or mixed; a connection past the node's stream allowance counted as
over a cap."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import ssl
import time

import httpx
import pytest
import trio

from gate.identity import NodeIdentity
from gate.protocol import (
    ActivateDomain,
    DomainRequest,
    NodeId,
    RelayError,
    Role,
    StreamType,
    encode_preamble,
)
from gate.services.relay.control_stream import RelayControlStream
from gate.services.relay.front import OVER_CAP_ALERT
from gate.services.transport.quic import bind_endpoint

from .gate_process import GateServe, announced, run_gate, wait_for
from .test_gateway import HI, MODEL, NO_EOS
from .test_relay import DOMAIN, RelayedHTTPS, _get, relay_and_node  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e


def status_url(relay) -> str:
    line = next(line for line in announced(relay) if line.startswith("Status on "))
    return re.match(r"Status on (http://\S+)/health", line).group(1)


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_the_relay_prints_its_status_url_and_serves_health_and_metrics(relay_and_node):  # noqa: F811
    relay, relay_port, _, node_id, key, context, relay_address = relay_and_node
    url = status_url(relay)
    assert url.startswith("http://127.0.0.1:")
    assert _get(node_id, relay_port, context, "/health", key)[0] == 200
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["node_id"] == relay_address.partition("@")[0]
    assert health["domain"] == DOMAIN
    assert (health["registered_nodes"], health["connected_nodes"]) == (1, 1)
    metrics = samples(httpx.get(f"{url}/metrics", timeout=10).text)
    assert metrics['gate_relay_connections_total{outcome="routed"}'] >= 2  # the fixture's too
    assert metrics['gate_relay_bytes_total{direction="out"}'] > 1000  # the node's certificate
    assert metrics["gate_relay_registered_nodes"] == 1
    assert metrics["gate_relay_connected_nodes"] == 1


def test_the_node_shows_its_relay_state_and_public_url(relay_and_node, gate_env):  # noqa: F811
    relay, _, node, node_id, _, _, relay_address = relay_and_node
    relay_id = relay_address.partition("@")[0]
    public = f"https://{node_id}.{DOMAIN}"
    env = {**gate_env, "GATE_SERVER__BIND": node.url.removeprefix("http://")}

    shown = run_gate("status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"relay     {relay_id}  registered  {public}" in shown.stdout.decode().splitlines()
    status = json.loads(run_gate("status", "--json", env=env).stdout)  # node_status
    assert status["relays"] == [
        {"relay_id": relay_id, "state": "registered", "reason": "", "url": public}
    ]
    assert httpx.get(f"{node.url}/health", timeout=10).json()["relays"] == status["relays"]

    # The relay goes away: the node says so, and why, and keeps trying.
    relay.close()

    def failed():
        relays = json.loads(run_gate("status", "--json", env=env).stdout)["relays"]
        return relays[0] if relays[0]["state"] == "failed" else None

    link = wait_for(failed, "the relay shown as failed", timeout=40)
    assert link["reason"] and link["url"] == public
    shown = run_gate("status", env=env).stdout.decode()
    line = next(ln for ln in shown.splitlines() if ln.startswith("relay"))
    assert re.match(rf"relay     {relay_id}  (failed \(.+\)|registering)  {public}", line), line


CONNECTIONS = 200


def test_200_concurrent_connections_with_streamed_answers_none_lost_or_mixed(relay_and_node):  # noqa: F811
    """Each connection asks for its own number of tokens (1 to 8, by its index) with EOS
    banned, so its answer must have exactly that many content chunks, all under one
    completion id that no other connection got: an answer lost, cut or mixed with
    another's fails. All 200 are open at once: a barrier holds them until each has its
    TLS connection through the relay."""
    relay, relay_port, _, node_id, key, context, _ = relay_and_node
    hostname = f"{node_id}.{DOMAIN}"
    import threading

    barrier = threading.Barrier(CONNECTIONS, timeout=60)

    def one(i: int) -> tuple[int, str, int]:
        conn = RelayedHTTPS(hostname, relay_port, context)
        conn.timeout = 90
        conn.connect()
        barrier.wait()
        tokens = 1 + i % 8
        body = {
            "model": MODEL,
            "messages": HI,
            "max_tokens": tokens,
            "stream": True,
            "logit_bias": NO_EOS,
        }
        response = conn.post_json("/v1/chat/completions", body, key)
        text = response.read().decode()
        conn.close()
        assert response.status == 200, text
        events = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]", (i, events[-3:])
        chunks = [json.loads(e) for e in events[:-1]]
        ids = {c["id"] for c in chunks}
        assert len(ids) == 1, (i, ids)
        content = sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content"))
        return tokens, ids.pop(), content

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONNECTIONS) as pool:
        results = list(pool.map(one, range(CONNECTIONS)))
    elapsed = time.monotonic() - started
    assert [content for _, _, content in results] == [tokens for tokens, _, _ in results]
    assert len({cid for _, cid, _ in results}) == CONNECTIONS  # no answer went to two
    metrics = samples(httpx.get(f"{status_url(relay)}/metrics", timeout=10).text)
    assert metrics['gate_relay_connections_total{outcome="routed"}'] >= CONNECTIONS
    assert (
        metrics["gate_relay_open_connections"] == 0 or metrics["gate_relay_open_connections"] <= 1
    )
    print(f"{CONNECTIONS} concurrent streamed connections through the relay in {elapsed:.1f} s")


ALLOWANCE = 100  # QUIC's default, which iroh keeps: streams a peer may have open at once


def _client_hello(name: str) -> bytes:
    """A real ClientHello for `name`, from Python's TLS (what a browser sends first)."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_connection_past_the_nodes_stream_allowance_is_counted_as_over_its_cap(
    tmp_path,
    gate_env,
):
    """Each browser connection is one stream the relay opens to the node, within the
    node's allowance (its QUIC MAX_STREAMS: 4,096 for a Gate node). Past it the relay
    is refused a stream: counted as over a cap (`over_cap_node_streams`, with the
    over-cap alert), not as a node that cannot be reached. The node here is the test's
    own iroh endpoint speaking the relay protocol, with QUIC's default allowance of 100
    (a real `gate serve` could only be filled with 4,096 connections; an allowance
    lowered after the handshake does not take back what the handshake granted), holding
    each stream open."""
    relay = GateServe(
        {
            **gate_env,
            "GATE_RELAYD_DOMAIN": DOMAIN,
            "GATE_RELAYD_LISTEN": "127.0.0.1:0",
            "GATE_RELAYD_P2P_PORT": "0",
            "GATE_RELAYD_P2P_BIND_HOST": "127.0.0.1",
            "GATE_RELAYD_IROH_RELAY_MODE": "disabled",
            "GATE_RELAYD_DISCOVERY": "false",
            "GATE_RELAYD_DATA_DIR": str(tmp_path / "relay-data"),
            "GATE_RELAYD_CONNECT_TIMEOUT": "2",
            "GATE_RELAYD_STATUS_BIND": "127.0.0.1:0",
        },
        serve=("relay", "serve"),
        ready=r"TLS listening on (\S+)",
    ).start()
    p2p = next(line for line in relay.stdout_lines if line.startswith("P2P address "))
    relay_id, _, relay_addr = p2p.removeprefix("P2P address ").strip().partition("@")
    host, _, port = relay.url.rpartition(":")
    identity = NodeIdentity.generate()
    node_id = NodeId(identity.public_key_bytes)
    name = f"{node_id}.{DOMAIN}"
    hello = _client_hello(name)

    browsers: list[trio.SocketStream] = []  # kept open: each holds its stream to the node

    async def browser() -> bytes:
        """One connection: its ClientHello, and the relay's first answer."""
        stream = await trio.open_tcp_stream(host, int(port))
        browsers.append(stream)
        await stream.send_all(hello)
        with trio.fail_after(10):
            return await stream.receive_some(1024)

    async def run() -> list[bytes]:
        endpoint = await bind_endpoint(identity.secret_key_bytes, host="127.0.0.1")
        try:
            with trio.fail_after(40):
                conn = await endpoint.connect(NodeId.parse(relay_id), [relay_addr])
                control_stream = await conn.open_stream()
                await control_stream.send_all(encode_preamble(StreamType.RELAY_CONTROL))
                control = RelayControlStream(control_stream, Role.INITIATOR)
                for request in (DomainRequest(node_id=str(node_id)), ActivateDomain(domain=name)):
                    await control.send(request)
                    answer = await control.receive()
                    assert answer is not None and not isinstance(answer.payload, RelayError)
                held = []

                async def serve_streams() -> None:
                    while True:  # bounded by the nursery's cancel below
                        stream = await conn.accept_stream()
                        held.append(stream)  # held open: the allowance stays used
                        await stream.receive_some(4096)
                        await stream.send_all(b"\x16\x03\x03\x00\x00")  # a TLS record's head

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(serve_streams)
                    answers = [await browser() for _ in range(ALLOWANCE)]
                    answers.append(await browser())  # one more: no stream left
                    for stream in browsers:
                        await trio.aclose_forcefully(stream)
                    nursery.cancel_scope.cancel()
                conn.close()
                return answers
        finally:
            with trio.CancelScope(shield=True):
                await endpoint.aclose()

    try:
        answers = trio.run(run)
        assert answers[:ALLOWANCE] == [b"\x16\x03\x03\x00\x00"] * ALLOWANCE  # routed
        assert answers[ALLOWANCE] == OVER_CAP_ALERT
        metrics = samples(httpx.get(f"{status_url(relay)}/metrics", timeout=10).text)
        assert metrics['gate_relay_connections_total{outcome="over_cap_node_streams"}'] == 1
        assert metrics['gate_relay_connections_total{outcome="node_unreachable"}'] == 0
        assert metrics['gate_relay_connections_total{outcome="routed"}'] == ALLOWANCE
    finally:
        relay.close()
