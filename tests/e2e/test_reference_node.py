"""The reference node (spec/reference, written from the spec alone) and Gate, both ways:
real gate processes, the reference node as a process of its own, the real llama.cpp
engine behind either."""

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .gate_process import run_gate, wait_for
from .test_gateway import HI, LONG_STREAM, MODEL, NO_EOS
from .test_peers import free_udp_port, make_node, start  # noqa: F401

pytestmark = pytest.mark.e2e

REFERENCE = [sys.executable, "-m", "spec.reference"]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Reference:
    """A running reference node: `address` is what Gate's trusted_peers takes."""

    process: subprocess.Popen
    node_id: str
    address: str
    lines: list[str]
    p2p_port: int

    def read_lines(self) -> None:  # in a thread: its output, line by line, into `lines`
        for line in self.process.stdout:
            self.lines.append(line.decode().rstrip())

    def wait_for_line(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline, f"no {text!r} in {self.lines}"
            assert self.process.poll() is None, f"the reference node exited: {self.lines}"
            time.sleep(0.05)


@pytest.fixture
def reference(tmp_path):
    started: list[Reference] = []

    def run(*args: str, key: str = "ref.key") -> Reference:
        port = free_udp_port()
        command = [*REFERENCE, "serve", "--key", str(tmp_path / key), "--port", str(port), *args]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE)
        ref = Reference(process, "", "", [], port)
        started.append(ref)
        threading.Thread(target=ref.read_lines, daemon=True).start()
        ref.wait_for_line("address ")
        ref.node_id = ref.lines[0].split()[1]
        ref.address = f"{ref.node_id}@127.0.0.1:{port}"
        return ref

    yield run
    for ref in started:
        ref.process.terminate()
        ref.process.wait(10)
        ref.process.stdout.close()


def key_id(path: Path) -> str:
    done = subprocess.run([*REFERENCE, "id", "--key", str(path)], cwd=ROOT, capture_output=True)
    return done.stdout.decode().strip()


def ask(key: Path, node, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [*REFERENCE, "ask", "--key", str(key), "--to", node.address, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=timeout)


def chat(stream: bool, max_tokens: int = 8) -> dict:
    return {
        "model": MODEL,
        "messages": HI,
        "max_tokens": max_tokens,
        "stream": stream,
        "logit_bias": NO_EOS,
    }


def engine_is_free(url: str) -> float:
    """How long a one-token request takes: long if the engine is still busy."""
    started = time.monotonic()
    reply = httpx.post(url, timeout=60, json=chat(False, 1))
    assert reply.status_code == 200, reply.text
    return time.monotonic() - started


def test_gate_uses_the_reference_node_as_a_peer(make_node, reference, llama_engine):  # noqa: F811
    """Gate dials it, handshakes, pings, asks its capabilities, and sends it chat
    completions by header and by model, streamed and not, which it serves from llama.cpp."""
    gate = make_node("gate")
    ref = reference("--upstream", llama_engine.root_url, "--trust", gate.node_id)
    start(gate, trust=[ref])
    wait_for(lambda: gate.peer_status(ref) == "connected", "gate -> reference")
    ref.wait_for_line(f"handshake accepted {gate.node_id}")
    url = f"{gate.url}/v1/chat/completions"
    # By header, and by model: Gate has no engine, the model is the reference node's
    # (from its capabilities).
    for headers in ({"x-target-node": ref.node_id}, {}):
        whole = httpx.post(url, json=chat(False), headers=headers, timeout=60)
        assert whole.status_code == 200, whole.text
        assert whole.json()["choices"][0]["message"]["content"]
        with httpx.stream("POST", url, json=chat(True), headers=headers, timeout=60) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and len(lines) > 3
    # Heartbeats keep going (every 0.5 s here): the peer stays connected.
    time.sleep(2)
    assert gate.peer_status(ref) == "connected"


def test_a_reference_node_without_its_upstream_is_503_through_gate(make_node, reference):  # noqa: F811
    """§7.5: the reference node answers StreamError UNAVAILABLE when its upstream is
    unreachable; Gate gives its client 503, not 502."""
    gate = make_node("gate")
    dead = f"http://127.0.0.1:{free_udp_port()}"
    ref = reference("--upstream", dead, "--model", MODEL, "--trust", gate.node_id)
    start(gate, trust=[ref])
    wait_for(lambda: gate.peer_status(ref) == "connected", "gate -> reference")
    reply = httpx.post(f"{gate.url}/v1/chat/completions", json=chat(False), timeout=60)
    assert reply.status_code == 503, reply.text
    assert "code 401" in reply.json()["error"]["message"]


def test_the_reference_node_uses_gate(make_node, llama_engine, tmp_path):  # noqa: F811
    """`ask`: the handshake with a Gate node, then one http_proxy request, streamed or not."""
    key = tmp_path / "ref.key"
    ref_id = key_id(key)
    gate = start(make_node("gate"), trust=[type("R", (), {"address": ref_id})], engine=llama_engine)
    models = ask(key, gate, "/v1/models")
    assert models.returncode == 0, models.stderr
    status, _, body = models.stdout.partition(b"\n")
    assert status == b"status 200" and MODEL in json.loads(body)["data"][0]["id"]
    post = ("-X", "POST", "/v1/chat/completions", "--data")
    whole = ask(key, gate, *post, json.dumps(chat(False)))
    assert whole.returncode == 0, whole.stderr
    assert json.loads(whole.stdout.partition(b"\n")[2])["choices"][0]["message"]["content"]
    streamed = ask(key, gate, *post, json.dumps(chat(True)))
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.rstrip().endswith(b"data: [DONE]")
    # An untrusted key is refused at the handshake (§5.4).
    stranger = ask(tmp_path / "stranger.key", gate, "/v1/models")
    assert stranger.returncode != 0 and b"refused" in stranger.stderr


def test_cancellation_from_gate_reaches_the_reference_nodes_upstream(
    make_node,  # noqa: F811
    reference,
    llama_engine,
):
    """§7.3: a client that leaves a stream through Gate makes Gate cancel the peer's
    stream; the reference node stops its upstream call, so the engine is free at once."""
    gate = make_node("gate")
    ref = reference("--upstream", llama_engine.root_url, "--trust", gate.node_id)
    start(gate, trust=[ref])
    wait_for(lambda: gate.peer_status(ref) == "connected", "gate -> reference")
    url = f"{gate.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=LONG_STREAM, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
    ref.wait_for_line("cancelled by requester")
    assert engine_is_free(f"{llama_engine.root_url}/v1/chat/completions") < 4


def test_cancellation_from_the_reference_node_reaches_gates_engine(
    make_node,  # noqa: F811
    llama_engine,
    tmp_path,
):
    """§7.3: the reference node cancels with an error frame after a few chunks; Gate
    cancels its engine call, so the engine is free at once (1,900 tokens otherwise)."""
    key = tmp_path / "ref.key"
    gate = start(
        make_node("gate"), trust=[type("R", (), {"address": key_id(key)})], engine=llama_engine
    )
    body = json.dumps(LONG_STREAM)
    cancelled = ask(
        key, gate, "-X", "POST", "--data", body, "--cancel-after", "3", "/v1/chat/completions"
    )
    assert cancelled.returncode == 0 and cancelled.stdout.rstrip().endswith(b"cancelled")
    assert engine_is_free(f"{gate.url}/v1/chat/completions") < 4


def test_the_reference_node_passes_gate_conformance(make_node, reference, tmp_path, llama_engine):  # noqa: F811
    """Every node case of `gate conformance`, the SHOULDs included (--strict), with a
    trusted key, the reference node serving the real engine (the streamed and cancelled
    cases need one)."""
    tester = make_node("tester")  # never started: only its key is used
    pem = tmp_path / "tester.pem"
    assert run_gate("identity", "export", "-o", str(pem), env=tester.env).returncode == 0
    ref = reference("--upstream", llama_engine.root_url, "--trust", tester.node_id)
    result = run_gate(
        "conformance", ref.address, "--identity", str(pem), "--bind-host", "127.0.0.1",
        "--strict", "--json", env=tester.env, timeout=600,
    )  # fmt: skip
    cases = json.loads(result.stdout)
    failed = [
        f"{c['id']}: {c['detail']}\n    " + "\n    ".join(c["evidence"])
        for c in cases
        if c["outcome"] != "pass"
    ]
    assert result.returncode == 0 and not failed, "\n".join(failed)


def test_gate_forwards_no_credentials_to_a_peer(make_node, reference):  # noqa: F811
    """§7.1: end-to-end headers reach the peer; the credentials the client presented to
    Gate (its key, a cookie, proxy credentials) and Gate's routing header do not."""
    gate = make_node("gate")
    ref = reference("--echo", "--model", MODEL, "--trust", gate.node_id)
    start(gate, trust=[ref])
    wait_for(lambda: gate.peer_status(ref) == "connected", "gate -> reference")
    sent = {
        "authorization": "Bearer gate-key",
        "x-api-key": "gate-key",
        "proxy-authorization": "Basic cHJveHk=",
        "cookie": "gate_session=secret",
        "x-target-node": ref.node_id,
        "anthropic-version": "2023-06-01",
        "x-custom": "kept",
    }
    reply = httpx.post(
        f"{gate.url}/v1/chat/completions", json=chat(False), headers=sent, timeout=60
    )
    assert reply.status_code == 200, reply.text
    seen = {name.lower(): value for name, value in reply.json()["headers"]}
    assert seen["x-custom"] == "kept" and seen["anthropic-version"] == "2023-06-01"
    assert seen["content-type"] == "application/json"
    for name in ("authorization", "x-api-key", "proxy-authorization", "cookie", "x-target-node"):
        assert name not in seen, name
