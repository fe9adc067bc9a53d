"""The relay door end to end: `gate relay serve` and `gate serve` as separate processes on
loopback (iroh relays and discovery off), a test CA made here issuing the node's
certificate, the real llama.cpp engine behind the node, and a plain Python HTTPS client
that reaches the node through the relay's TCP port by SNI, as a browser would (headless
Chromium itself, restarts and the rest: test_relay_world.py)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl

import pytest
import trio

from gate.identity import NodeIdentity
from gate.protocol import (
    ActivateDomain,
    DomainRequest,
    ErrorCode,
    NodeId,
    RelayError,
    Role,
    StreamType,
    encode_preamble,
)
from gate.services.relay.control_stream import RelayControlStream
from gate.services.transport.quic import bind_endpoint
from tests.local_ca import LocalCA

from .conftest import engine_config
from .gate_process import GateServe, p2p_address, relay_env, relay_serve, run_gate, wait_for
from .test_gateway import HI, MODEL, NO_EOS

pytestmark = pytest.mark.e2e

DOMAIN = "relay.test"
NOWHERE = "127.0.0.1:9"  # no daemon answers there: `gate keys create` writes gate.db


class RelayedHTTPS(http.client.HTTPSConnection):
    """HTTPS to `hostname`, whose TCP connection goes to the relay's port (what
    --host-resolver-rules or a DNS wildcard record does for a browser)."""

    def __init__(self, hostname: str, relay: tuple[str, int], context: ssl.SSLContext):
        super().__init__(hostname, relay[1], context=context, timeout=30)
        self._relay = relay
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection(self._relay, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as browsers do
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

    def post_json(self, path: str, body: dict, key: str) -> http.client.HTTPResponse:
        """POST `body` as JSON, `key` as the bearer token; the response."""
        self.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        return self.getresponse()


@pytest.fixture
def relay_and_node(tmp_path, gate_env, llama_engine):
    """A relay for relay.test and a node registered with it, serving llama.cpp's model
    behind an API key; yields (relay, node, node_id, key, client context)."""
    env = relay_env(gate_env, DOMAIN, tmp_path / "relay-data")
    relay = relay_serve({**env, "GATE_RELAYD_IDLE_TIMEOUT": "30"}).start()
    relay_address = p2p_address(relay)

    node_env = dict(gate_env)
    node_id = json.loads(run_gate("identity", "show", "--json", env=node_env).stdout)["node_id"]
    created = run_gate(
        "keys", "create", "relay-test", "--json", env={**node_env, "GATE_SERVER__BIND": NOWHERE}
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    ca = LocalCA()
    cert_file, key_file = ca.issue(f"{node_id}.{DOMAIN}", tmp_path / "tls")
    config = engine_config(llama_engine) + (
        f"[relay]\nenabled = true\nservers = [{json.dumps(relay_address)}]\n"
        f"[tls]\ncert_file = {json.dumps(str(cert_file))}\nkey_file = {json.dumps(str(key_file))}\n"
    )
    node = GateServe(node_env, config=config).start()
    context = ssl.create_default_context(cadata=ca.pem())
    host, _, port = relay.url.rpartition(":")
    try:
        relay_port = (host, int(port))
        # Registered once the relay routes the name: until then, unrecognized_name.
        wait_for(
            lambda: _get(node_id, relay_port, context, "/health", key) is not None,
            "the node's name routed by the relay",
        )
        yield relay, relay_port, node, node_id, key, context, relay_address
    finally:
        node.close()
        relay.close()


def _get(node_id, relay_port, context, path, key):
    try:
        conn = RelayedHTTPS(f"{node_id}.{DOMAIN}", relay_port, context)
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body
    except (ssl.SSLError, ConnectionError, OSError):
        return None


def test_https_through_the_relay_reaches_the_node_behind_an_api_key(relay_and_node):
    _, relay_port, _, node_id, key, context, _ = relay_and_node
    hostname = f"{node_id}.{DOMAIN}"

    status, body = _get(node_id, relay_port, context, "/v1/models", key)
    assert status == 200, body
    assert MODEL in {m["id"] for m in json.loads(body)["data"]}

    # The certificate the client checked is the node's, issued by the test CA: the relay
    # passed TLS through.
    conn = RelayedHTTPS(hostname, relay_port, context)
    conn.connect()
    peer_cert = conn.sock.getpeercert()
    assert ("DNS", hostname) in peer_cert["subjectAltName"]
    conn.close()

    # A streamed chat completion, token by token, on the same kind of connection.
    conn = RelayedHTTPS(hostname, relay_port, context)
    request = {
        "model": MODEL,
        "messages": HI,
        "max_tokens": 8,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    response = conn.post_json("/v1/chat/completions", request, key)
    assert response.status == 200
    assert response.getheader("content-type").startswith("text/event-stream")
    events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    conn.close()
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert sum(1 for d in deltas if d) == 8  # one token per byte: eight chunks of text

    # No key: 401, even though the node's own listener is on loopback without keys.
    conn = RelayedHTTPS(hostname, relay_port, context)
    conn.request("GET", "/v1/models")
    response = conn.getresponse()
    assert response.status == 401
    assert "API key" in json.loads(response.read())["error"]["message"]
    conn.close()

    # The control plane and the web UI are not on this door.
    for path in ("/rpc/events", "/", "/metrics"):
        status, _ = _get(node_id, relay_port, context, path, key)
        assert status == 404, path


def test_an_unknown_name_is_closed_with_an_alert(relay_and_node):
    _, relay_port, _, node_id, key, context, _ = relay_and_node
    stranger = NodeId(NodeIdentity.generate().public_key_bytes)
    for name in (f"{stranger}.{DOMAIN}", f"{node_id}.other.test", f"www.{DOMAIN}"):
        with (
            socket.create_connection(relay_port, timeout=10) as sock,
            pytest.raises(ssl.SSLError, match=re.compile("unrecognized.name", re.I)),
        ):
            context.wrap_socket(sock, server_hostname=name)
    # The node's own name still works.
    assert _get(node_id, relay_port, context, "/health", key)[0] == 200


def test_another_node_cannot_take_the_name(relay_and_node):
    _, relay_port, _, node_id, key, context, relay_address = relay_and_node
    relay_id, _, addr = relay_address.partition("@")
    intruder = NodeIdentity.generate()

    async def claim() -> list[object]:
        endpoint = await bind_endpoint(intruder.secret_key_bytes, host="127.0.0.1")
        try:
            with trio.fail_after(20):
                conn = await endpoint.connect(NodeId.parse(relay_id), [addr])
                stream = await conn.open_stream()
                await stream.send_all(encode_preamble(StreamType.RELAY_CONTROL))
                control = RelayControlStream(stream, Role.INITIATOR)
                answers = []
                for request in (
                    DomainRequest(node_id=node_id),
                    ActivateDomain(domain=f"{node_id}.{DOMAIN}"),
                    ActivateDomain(domain=f"{node_id.upper()}.{DOMAIN.upper()}"),
                ):
                    await control.send(request)
                    message = await control.receive()
                    answers.append(message.payload if message else None)
                conn.close()
                return answers
        finally:
            with trio.CancelScope(shield=True):
                await endpoint.aclose()

    answers = trio.run(claim)
    assert all(isinstance(a, RelayError) for a in answers), answers
    assert {a.code for a in answers} == {ErrorCode.UNAUTHORIZED}
    # Nothing changed: the name still leads to the node, and its answer is the node's.
    status, body = _get(node_id, relay_port, context, "/v1/models", key)
    assert status == 200, body


def test_connections_one_after_another_beyond_the_nodes_stream_limit(relay_and_node):
    """Each browser connection is one QUIC stream the relay opens to the node, and the
    node lets a relay have ~100 open at once: a connection that ended must give its
    stream back at once (it once waited for hypercorn's 75 s keep-alive)."""
    _, relay_port, _, node_id, key, context, _ = relay_and_node
    for i in range(150):
        answer = _get(node_id, relay_port, context, "/health", key)
        assert answer == (200, b'{"status":"ok"}'), f"connection {i}: {answer}"


def test_more_connections_held_at_once_than_quics_default_stream_limit(relay_and_node):
    """Each held browser connection is one open stream on the node's connection to the
    relay; QUIC lets a peer have 100 open by default, so the 101st once waited for one
    to end and was refused after the relay's connect timeout."""
    _, relay_port, _, node_id, key, context, _ = relay_and_node
    conns = []
    try:
        for _ in range(150):
            conn = RelayedHTTPS(f"{node_id}.{DOMAIN}", relay_port, context)
            conn.connect()
            conns.append(conn)
        for i, conn in enumerate(conns):
            conn.request("GET", "/health", headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}'), i
    finally:
        for conn in conns:
            conn.close()
