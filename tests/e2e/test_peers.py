"""Peer-to-peer end to end: Gate nodes as separate processes on loopback, iroh relays off,
dialled by direct address. Node A fronts the real llama.cpp engine; B and C have no engine
and reach A's model through it."""

import json
import signal
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import trio

from gate.identity import NodeIdentity, load_identity
from gate.protocol import NodeId
from gate.services.p2p.http_over_stream import request_over_stream
from gate.services.transport.quic import bind_endpoint

from .conftest import engine_config
from .gate_process import GateServe, data_dir, run_gate, wait_for
from .test_gateway import HI, LONG_STREAM, MODEL, NO_EOS, cut_stream, hang_up_then_ask

pytestmark = pytest.mark.e2e

HEARTBEAT = 0.5  # seconds; a peer silent for 3 intervals is Disconnected
PAUSE = 8.0  # seconds an engine stops for; longer than it takes to notice a dead peer


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    env: dict[str, str]
    node_id: str
    p2p_port: int
    gate: GateServe | None = None

    @property
    def address(self) -> str:
        return f"{self.node_id}@127.0.0.1:{self.p2p_port}"

    @property
    def url(self) -> str:
        assert self.gate is not None
        return self.gate.url

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def peer_status(self, other: "Node") -> str:
        peer = self.health().get("peers", {}).get(other.node_id)
        return peer["status"]["type"] if peer else "absent"


@pytest.fixture
def make_node(tmp_path, gate_env):
    nodes: list[Node] = []

    def make(name: str) -> Node:
        env = {
            **gate_env,
            "XDG_CONFIG_HOME": str(tmp_path / name / "config"),
            "XDG_DATA_HOME": str(tmp_path / name / "data"),
        }
        node_id = json.loads(run_gate("identity", "show", "--json", env=env).stdout)["node_id"]
        node = Node(name, env, node_id, free_udp_port())
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.gate is not None:
            node.gate.close()


def start(node: Node, *, trust: list[Node], engine=None, heartbeat: float = HEARTBEAT) -> Node:
    # Trusted peers go in the file, as a user (or `gate peers add`) would put them.
    config = engine_config(engine) if engine is not None else ""
    config += f"\n[p2p]\ntrusted_peers = {json.dumps([peer.address for peer in trust])}\n"
    env = {
        **node.env,
        "GATE_P2P__PORT": str(node.p2p_port),
        "GATE_P2P__HEARTBEAT_INTERVAL": str(heartbeat),
    }
    node.gate = GateServe(env, config=config).start()
    return node


@pytest.fixture
def trio_of_nodes(make_node, llama_engine):
    """A (engine) trusts B and C; B and C trust A. All connected."""
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    start(a, trust=[b, c], engine=llama_engine)
    start(b, trust=[a])
    start(c, trust=[a])
    for node in (b, c):
        wait_for(lambda node=node: node.peer_status(a) == "connected", f"{node.name} -> a")
    return a, b, c


def usage_rows(node: Node) -> list[tuple]:
    node.gate.signal(signal.SIGTERM)
    node.gate.wait()
    with sqlite3.connect(data_dir(node.env) / "gate.db") as db:
        return db.execute("SELECT client, provider, peer, status FROM usage ORDER BY id").fetchall()


def test_route_by_header_and_by_model(trio_of_nodes):
    a, b, c = trio_of_nodes
    body = {"model": MODEL, "messages": HI, "max_tokens": 3, "logit_bias": NO_EOS}
    by_header = httpx.post(
        f"{b.url}/v1/chat/completions", json=body, timeout=30, headers={"x-target-node": a.node_id}
    )
    by_model = httpx.post(f"{c.url}/v1/chat/completions", json=body, timeout=30)
    assert by_header.status_code == 200 and by_model.status_code == 200
    assert by_header.json()["usage"]["completion_tokens"] == 3
    listed = httpx.get(f"{b.url}/v1/models", timeout=10).json()["data"]
    assert listed == [
        {"id": MODEL, "object": "model", "created": 0, "owned_by": f"peer:{a.node_id}"}
    ]
    rows = usage_rows(a)  # A marks each request with the peer that sent it
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (f"peer:{b.node_id}", b.node_id, 200),
        (f"peer:{c.node_id}", c.node_id, 200),
    ]


def test_streaming_through_a_peer_with_both_sdks(trio_of_nodes):
    _a, b, _ = trio_of_nodes
    with openai.OpenAI(base_url=f"{b.url}/v1", api_key="x", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=HI,
                max_tokens=5,
                stream=True,
                temperature=0,
                extra_body={"logit_bias": NO_EOS},
            )
        )
        direct = client.chat.completions.create(
            model=MODEL,
            messages=HI,
            max_tokens=5,
            temperature=0,
            extra_body={"logit_bias": NO_EOS},
        )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == direct.choices[0].message.content and len(streamed) == 5
    with (
        anthropic.Anthropic(base_url=b.url, api_key="x", max_retries=0) as client,
        client.messages.stream(model=MODEL, max_tokens=4, messages=HI) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text and final.usage.output_tokens >= 1


def test_unknown_and_unreachable_targets_get_clear_errors(trio_of_nodes, make_node):
    _a, b, _ = trio_of_nodes
    stranger = make_node("stranger")
    body = {"model": MODEL, "messages": HI, "max_tokens": 1}
    unknown = httpx.post(
        f"{b.url}/v1/chat/completions",
        json=body,
        timeout=10,
        headers={"x-target-node": stranger.node_id},
    )
    assert unknown.status_code == 404 and "not a trusted peer" in unknown.json()["error"]["message"]
    garbage = httpx.post(
        f"{b.url}/v1/messages",
        timeout=10,
        json={"model": MODEL, "max_tokens": 1, "messages": HI},
        headers={"x-target-node": "nope", "anthropic-version": "2023-06-01"},
    )
    assert garbage.status_code == 400 and garbage.json()["type"] == "error"


def test_untrusted_node_is_refused_and_reaches_no_engine(make_node, llama_engine):
    a, intruder = make_node("a"), make_node("intruder")
    start(a, trust=[], engine=llama_engine)
    start(intruder, trust=[a])  # it trusts A; A does not trust it
    status = wait_for(
        lambda: (
            intruder.health()["peers"][a.node_id]["status"]
            if intruder.peer_status(a) == "failed"
            else None
        ),
        "the refusal",
    )
    assert "not a trusted peer" in status["reason"]
    response = httpx.post(
        f"{intruder.url}/v1/chat/completions",
        timeout=10,
        json={"model": MODEL, "messages": HI, "max_tokens": 1},
        headers={"x-target-node": a.node_id},
    )
    assert response.status_code == 503
    assert usage_rows(a) == []  # nothing of it reached A's pipeline, let alone the engine


async def ask_as_peer(
    identity: NodeIdentity, node: Node, requests: list[tuple[str, str, bytes]]
) -> list[tuple[int, bytes]]:
    """Send each (method, target, JSON body) to `node` on an HttpProxy stream of its own,
    as the peer `identity`; the status and body of each answer (the head only for a
    200 event stream, which never ends)."""
    endpoint = await bind_endpoint(identity.secret_key_bytes, host="127.0.0.1")
    answers = []
    try:
        with trio.fail_after(30):
            conn = await endpoint.connect(
                NodeId.parse(node.node_id), [f"127.0.0.1:{node.p2p_port}"]
            )
            for method, target, body in requests:
                stream = await conn.open_stream()
                headers = [(b"content-type", b"application/json")] if body else []
                response = await request_over_stream(
                    stream,
                    method=method,
                    target=target,
                    headers=headers,
                    body=body,
                    peer=node.name,
                    response_timeout=10,
                    read_timeout=10,
                )
                async with response:
                    streaming = response.header(b"content-type") == b"text/event-stream"
                    answer = b"" if streaming else await response.read()
                answers.append((response.status, answer))
            conn.close()
    finally:
        with trio.CancelScope(shield=True):
            await endpoint.aclose()
    return answers


def test_a_peer_reaches_the_api_and_nothing_else(make_node):
    """A trusted peer's requests come in at the peer door, which serves only the API a
    peer may use. A stock Gate never forwards `/rpc` or the web UI, but a peer that asks
    for them anyway gets the plain 404 of a path that does not exist."""
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b])
    # B's key speaks to A directly, as B's own gate would (B never runs: one endpoint
    # per key).
    b_key = load_identity(data_dir(b.env), None)
    rpc_call = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_status"}).encode()
    refused = [
        ("POST", "/rpc", rpc_call),
        ("GET", "/rpc/events", b""),
        ("GET", "/", b""),
        ("GET", "/ui/", b""),
        ("GET", "/ui/app.js", b""),
        ("GET", "/metrics", b""),
        ("GET", "/no-such-path", b""),
    ]
    served = [("GET", "/v1/models", b""), ("GET", "/health", b"")]
    answers = trio.run(ask_as_peer, b_key, a, refused + served)
    not_found = {"error": {"message": "not found", "type": "not_found"}}
    for (method, target, _), (status, body) in zip(refused, answers, strict=False):
        assert (status, json.loads(body or b"null")) == (404, not_found), (method, target)
    (models_status, models), (health_status, health) = answers[len(refused) :]
    assert models_status == 200 and json.loads(models)["data"] == []
    assert health_status == 200 and json.loads(health) == {"status": "ok"}
    # The same node's local door still serves all of it.
    assert httpx.get(f"{a.url}/", timeout=10).status_code == 200
    assert httpx.get(f"{a.url}/metrics", timeout=10).status_code == 200
    local = httpx.post(f"{a.url}/rpc", content=rpc_call, timeout=10, headers=_JSON)
    assert local.status_code == 200 and local.json()["result"]["node_id"] == a.node_id


_JSON = {"content-type": "application/json"}


def test_peer_killed_mid_stream_ends_the_stream_with_an_error(trio_of_nodes):
    a, b, _ = trio_of_nodes
    # Spec §7.3: B aborts the client's response; after the error event (for SDKs) the
    # framing shows the failure too (no terminating chunk), not a completed response.
    lines = cut_stream(f"{b.url}/v1/chat/completions", LONG_STREAM, a.gate.proc.kill)
    assert lines[-1] != "data: [DONE]"
    assert "error" in json.loads(lines[-1].removeprefix("data: "))


def test_peer_restarted_is_reconnected(trio_of_nodes, llama_engine):
    a, b, _ = trio_of_nodes
    a.gate.close()
    wait_for(lambda: b.peer_status(a) in ("disconnected", "failed"), "B to notice")
    start(a, trust=[b], engine=llama_engine)
    wait_for(lambda: b.peer_status(a) == "connected", "B to reconnect")
    reply = httpx.post(
        f"{b.url}/v1/chat/completions",
        timeout=30,
        json={"model": MODEL, "messages": HI, "max_tokens": 1},
    )
    assert reply.status_code == 200


def test_heartbeat_timeout_marks_the_peer_disconnected(trio_of_nodes):
    a, b, _ = trio_of_nodes
    a.gate.proc.send_signal(signal.SIGSTOP)  # alive but silent: no more Pongs
    try:
        started = time.monotonic()
        wait_for(
            lambda: b.peer_status(a) in ("disconnected", "failed", "connecting"),
            "the heartbeat timeout",
            timeout=HEARTBEAT * 3 + 10,
        )
        assert time.monotonic() - started < HEARTBEAT * 3 + 10
        down = httpx.post(
            f"{b.url}/v1/chat/completions",
            timeout=10,
            json={"model": MODEL, "messages": HI, "max_tokens": 1},
        )
        assert down.status_code == 404  # no engine and no connected peer serves it
        assert MODEL not in down.json()["error"]["message"].split("available models:")[1]
    finally:
        a.gate.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: b.peer_status(a) == "connected", "B to reconnect after SIGCONT")


def test_client_disconnect_cancels_the_engine_request_across_the_network(trio_of_nodes):
    _a, b, _ = trio_of_nodes
    # not waiting behind 1,900 tokens on A's engine
    assert hang_up_then_ask(f"{b.url}/v1/chat/completions", LONG_STREAM) < 4


def test_peers_json_remembers_addresses(trio_of_nodes):
    _, b, _ = trio_of_nodes
    cache = json.loads((Path(b.env["XDG_DATA_HOME"]) / "gate" / "peers.json").read_text())
    (entry,) = cache.values()
    assert entry["addresses"] and entry["capabilities"]["supported_models"][0]["id"] == MODEL


def config_file(node: Node) -> Path:
    return Path(node.env["XDG_CONFIG_HOME"]) / "gate-test.toml"  # written by GateServe


def test_peers_cli_adds_and_a_running_daemon_connects(make_node, llama_engine):
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b], engine=llama_engine)
    start(b, trust=[])  # B does not know A yet
    assert b.health()["peers"] == {}

    def gate_b(*args):  # `gate` pointed at B's daemon: the commands go through its RPC
        env = {**b.env, "GATE_SERVER__BIND": b.url.removeprefix("http://")}
        return run_gate(*args, "--config", str(config_file(b)), env=env)

    added = gate_b("peers", "add", a.address)
    assert added.returncode == 0, added.stderr
    wait_for(lambda: b.peer_status(a) == "connected", "B to pick up the new peer")
    listed = json.loads(gate_b("peers", "list", "--json").stdout)
    assert [(p["node_id"], p["status"]["type"], p["models"]) for p in listed] == [
        (a.node_id, "connected", [MODEL])
    ]
    info = gate_b("peers", "info", a.node_id)
    assert info.returncode == 0 and a.node_id in info.stdout.decode()
    assert "status     connected" in info.stdout.decode()
    # A hand edit that breaks the file is refused; the running config stays.
    config_file(b).write_text(config_file(b).read_text() + "\n[p2p]\nport = 'nope'\n")
    time.sleep(2.5)
    assert b.peer_status(a) == "connected"
    config_file(b).write_text(config_file(b).read_text().split("\n[p2p]\nport = 'nope'")[0])
    removed = gate_b("peers", "remove", a.node_id)
    assert removed.returncode == 0, removed.stderr
    wait_for(lambda: a.node_id not in b.health()["peers"], "B to drop the peer")
    bad = gate_b("peers", "add", "not-a-node")
    assert bad.returncode == 2 and "not a node id" in bad.stderr.decode()


def test_per_peer_concurrency_cap_is_429_to_the_caller(make_node, llama_engine):
    a, b = make_node("a"), make_node("b")
    a.env["GATE_P2P__PEER_MAX_IN_FLIGHT"] = "1"
    start(a, trust=[b], engine=llama_engine)
    start(b, trust=[a])
    wait_for(lambda: b.peer_status(a) == "connected", "B -> A")
    body = {"model": MODEL, "messages": HI, "max_tokens": 400, "stream": True, "logit_bias": NO_EOS}
    with httpx.stream("POST", f"{b.url}/v1/chat/completions", json=body, timeout=60) as first:
        assert first.status_code == 200
        second = httpx.post(f"{b.url}/v1/chat/completions", json=body, timeout=30)
        for _ in first.iter_lines():
            pass
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert f"peer:{b.node_id}" in second.json()["error"]["message"]


def test_a_change_of_models_reaches_peers_without_waiting_for_a_heartbeat(make_node, llama_engine):
    a, b = make_node("a"), make_node("b")
    # Pings a minute apart: the next capability_request would come minutes later.
    start(a, trust=[b], engine=llama_engine, heartbeat=60)
    start(b, trust=[a], heartbeat=60)
    # Both directions up, so no later handshake can carry the news either.
    wait_for(lambda: b.peer_status(a) == a.peer_status(b) == "connected", "A <-> B")

    def peer_models() -> set[str]:
        return {m["id"] for m in httpx.get(f"{b.url}/v1/models", timeout=10).json()["data"]}

    wait_for(lambda: peer_models() == {MODEL}, "B to learn A's model")
    added = httpx.post(
        f"{a.url}/rpc",
        timeout=30,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "add_provider",
            "params": {
                "name": "extra",
                "kind": "llamacpp",
                "base_url": llama_engine.root_url,
                "models": ["extra-model"],
            },
        },
    )
    assert "result" in added.json(), added.text
    began = time.monotonic()
    wait_for(lambda: "extra-model" in peer_models(), "A's new model to reach B", timeout=10)
    assert time.monotonic() - began < 5  # pushed, not picked up at a heartbeat
    routed = httpx.post(
        f"{b.url}/v1/chat/completions",
        json={"model": "extra-model", "messages": HI, "max_tokens": 1},
        timeout=30,
    )
    assert routed.status_code == 200, routed.text


def stream_until(url: str, body: dict, *, after_lines: int, then, timeout: float):
    """Stream a chat completion; after `after_lines` SSE lines call `then()`.

    Returns the data lines, how long the stream took to end after `then()` ran, and
    whether it ended aborted (no terminating chunk: a failed stream) rather than complete.
    An httpx read timeout of `timeout` bounds every wait, so a stream that hangs fails.
    """
    lines: list[str] = []
    acted_at = None
    aborted = False
    with httpx.stream("POST", url, json=body, timeout=timeout) as response:
        assert response.status_code == 200
        try:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == after_lines and acted_at is None:
                    then()
                    acted_at = time.monotonic()
        except httpx.RemoteProtocolError as exc:
            assert "incomplete chunked read" in str(exc), exc
            aborted = True
    assert acted_at is not None, lines
    return lines, time.monotonic() - acted_at, aborted


def test_peer_killed_mid_stream_is_noticed_within_seconds(make_node, llama_engine):
    # The default heartbeat (15 s): a dead peer is noticed long before three missed
    # pings, and long before QUIC's idle timeout (30 s) would end the stream.
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b], engine=llama_engine, heartbeat=15)
    start(b, trust=[a], heartbeat=15)
    wait_for(lambda: b.peer_status(a) == "connected", "B -> A")
    lines, took, aborted = stream_until(
        f"{b.url}/v1/chat/completions",
        LONG_STREAM,
        after_lines=5,
        then=a.gate.proc.kill,
        timeout=10,
    )
    assert took < 10 and aborted
    assert lines[-1] != "data: [DONE]"
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert a.node_id in error["message"]
    wait_for(
        lambda: b.peer_status(a) in ("disconnected", "connecting", "failed"),
        "B to mark A down",
        timeout=5,
    )


def test_a_live_peer_whose_engine_pauses_keeps_its_stream(make_node, make_llama_engine):
    # The engine stops producing tokens for longer than it takes to notice a dead peer;
    # the peer itself is alive and answers its pings, so the stream must go on.
    engine = make_llama_engine()
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b], engine=engine, heartbeat=15)
    start(b, trust=[a], heartbeat=15)
    wait_for(lambda: b.peer_status(a) == "connected", "B -> A")

    def pause_engine() -> None:
        engine.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(PAUSE)
        finally:
            engine.proc.send_signal(signal.SIGCONT)

    lines, _, aborted = stream_until(
        f"{b.url}/v1/chat/completions", LONG_STREAM, after_lines=5, then=pause_engine, timeout=30
    )
    assert lines[-1] == "data: [DONE]" and not aborted
    assert b.peer_status(a) == "connected"


def test_responses_api_through_a_peer(make_node, make_llama_engine):
    """A has llama.cpp, which lacks /v1/responses: A's gateway translates, keeps the
    conversation, and B relays. When A's engine dies mid-stream, A's `response.failed`
    reaches the client through B as the stream's last event, not followed by another."""
    a, b = make_node("a"), make_node("b")
    engine = make_llama_engine()
    start(a, trust=[b], engine=engine)
    start(b, trust=[a])
    wait_for(lambda: b.peer_status(a) == "connected", "b -> a")
    with openai.OpenAI(base_url=f"{b.url}/v1", api_key="x", max_retries=0, timeout=60) as client:
        first = client.responses.create(model=MODEL, input="hi", max_output_tokens=3)
        events = list(
            client.responses.create(
                model=MODEL,
                input="again",
                previous_response_id=first.id,
                max_output_tokens=3,
                stream=True,
            )
        )
    assert first.object == "response" and first.output_text
    final = events[-1].response
    assert final.previous_response_id == first.id and final.status in ("completed", "incomplete")
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 1900, "stream": True}
    lines = cut_stream(
        f"{b.url}/v1/responses", {**body, "logit_bias": NO_EOS}, engine.kill, after=12
    )
    assert lines[-2] == "event: response.failed"
    failed = json.loads(lines[-1].removeprefix("data: "))["response"]
    assert failed["status"] == "failed" and "mid-stream" in failed["error"]["message"]
