"""Hostile input at the HTTP front of a real `gate serve`: no request, however broken,
may stop the node or leave its connection.

The fuzzer is a seeded mutator over real request bytes (the requests the SDKs, curl and
the web UI send), run over many concurrent connections, bounded in count and time. A
failure prints its seed, so it replays exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .gate_process import GateServe, run_gate

pytestmark = pytest.mark.e2e

_CHAT = (
    b'{"model":"tiny","stream":true,"messages":[{"role":"user","content":"Hi"}],'
    b'"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}'
)
_MESSAGES = (
    b'{"model":"tiny","max_tokens":16,"system":"be brief",'
    b'"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}'
)
_RPC = b'{"jsonrpc":"2.0","id":1,"method":"node_status","params":{}}'


def _request(method: str, path: str, headers: list[str], body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _chunked(body: bytes) -> bytes:
    parts = [body[i : i + 17] for i in range(0, len(body), 17)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


SEEDS = [
    _request("GET", "/health", ["Connection: close"]),
    _request("GET", "/health", ["User-Agent: curl/8.5.0", "Accept: */*"]),
    _request("GET", "/v1/models", ["Authorization: Bearer sk-x", "anthropic-version: 2023-06-01"]),
    _request("GET", "/v1/models/tiny", []),
    _request("GET", "/metrics", []),
    _request("GET", "/", ["Accept: text/html"]),
    _request("POST", "/v1/chat/completions", ["Content-Type: application/json"], _CHAT),
    _request(
        "POST",
        "/v1/messages",
        ["x-api-key: k", "anthropic-version: 2023-06-01", "Content-Type: application/json"],
        _MESSAGES,
    ),
    _request("POST", "/v1/messages/count_tokens", ["anthropic-version: 2023-06-01"], _MESSAGES),
    _request("POST", "/v1/embeddings", [], b'{"model":"tiny","input":["a","b"]}'),
    _request("POST", "/v1/responses", [], b'{"model":"tiny","input":"Hi","stream":true}'),
    _request("POST", "/rpc", ["Content-Type: application/json", "Origin: http://evil"], _RPC),
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _chunked(_CHAT),
    # Two pipelined requests in one write.
    _request("GET", "/health", []) + _request("GET", "/v1/models", ["Connection: close"]),
]

_JUNK = [
    b"\r\n",
    b"\r\n\r\n",
    b"\x00",
    b"\xff\xfe",
    b"{",
    b"[" * 64,
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Expect: 100-continue\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"%00",
    b"/../../etc/passwd",
    b'"model":"' + b"m" * 300 + b'"',
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few random edits: flips, inserts of junk, deletions, truncation, repeats."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos:pos] = rng.choice(_JUNK)
        elif op == 2:
            del out[pos : pos + rng.randint(1, 16)]
        elif op == 3:
            del out[pos:]
        elif op == 4:
            out[pos:pos] = out[max(0, pos - 32) : pos] * rng.randint(1, 8)
        elif op == 5:
            out += rng.choice(_JUNK)  # trailing bytes after a complete request
        else:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out)


def send_case(port: int, data: bytes, rng: random.Random) -> None:
    """Write `data` in a few pieces, read a little of the answer, maybe hang up early."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            cuts = sorted(rng.sample(range(len(data) + 1), k=min(3, len(data) + 1)))
            start = 0
            for cut in [*cuts, len(data)]:
                sock.sendall(data[start:cut])
                start = cut
            if rng.random() < 0.2:
                return  # the client hangs up without reading
            with contextlib.suppress(OSError):
                sock.recv(65536)
    except OSError:
        pass  # refused, reset or timed out: the node may drop a bad connection


def hammer(port: int, cases: list[bytes], seed: int, threads: int) -> None:
    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        for data in cases[index::threads]:
            send_case(port, data, rng)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)


def assert_alive(gate: GateServe) -> None:
    assert gate.proc is not None and gate.proc.poll() is None, gate.stderr()[-3000:]
    response = httpx.get(f"{gate.url}/health", timeout=5)
    assert response.status_code == 200, response.text


def test_trailing_bytes_after_a_close_request_from_many_connections(gate_env):
    """The issue's reproduction: a complete `Connection: close` request with two more
    bytes in the same write, from 16 connections at once, used to end the process."""
    data = _request("GET", "/health", ["Connection: close"]) + b"XX"
    with GateServe(gate_env) as gate:
        port = int(gate.url.rsplit(":", 1)[1])
        hammer(port, [data] * 320, seed=0, threads=16)
        time.sleep(0.5)
        assert_alive(gate)
        stderr = gate.stderr()
    assert "Traceback" not in stderr and "Error in ASGI" not in stderr


@pytest.mark.parametrize("seed", [1, 2])
def test_a_fuzzer_over_real_requests_never_stops_the_node(gate_env, seed):
    rng = random.Random(seed)
    cases = [mutate(rng, rng.choice(SEEDS)) for _ in range(1500)]
    with GateServe(gate_env) as gate:
        port = int(gate.url.rsplit(":", 1)[1])
        started = time.monotonic()
        hammer(port, cases, seed, threads=16)
        assert time.monotonic() - started < 120, "the fuzzer is bounded in time"
        assert_alive(gate)
        # A well-formed request on a fresh connection still gets its full answer.
        models = httpx.get(f"{gate.url}/v1/models", timeout=5)
        stderr = gate.stderr()
    assert models.status_code == 200 and models.json()["object"] == "list"
    assert "Traceback" not in stderr, f"seed {seed}: {stderr[-3000:]}"


def test_health_tells_a_caller_without_a_key_only_that_the_node_is_alive(gate_env):
    """Keys required: engine names, peers' ids and addresses are for key holders only."""
    env = {**gate_env, "GATE_SECURITY__REQUIRE_API_KEYS": "true"}
    created = run_gate("keys", "create", "laptop", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.decode().split()[0]
    with GateServe(env) as gate:
        stranger = httpx.get(f"{gate.url}/health", timeout=5)
        wrong_key = httpx.get(f"{gate.url}/health", headers={"x-api-key": "sk-nope"}, timeout=5)
        owner = httpx.get(f"{gate.url}/health", headers={"x-api-key": key}, timeout=5)
    assert stranger.status_code == 200 and stranger.json() == {"status": "ok"}
    assert wrong_key.json() == {"status": "ok"}
    body = owner.json()
    assert body["node_id"] == gate.node_id and "providers" in body and "peers" in body


def _status_line(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
    return data.split(b"\r\n", 1)[0]


def _reads_to_eof(sock: socket.socket) -> bool:
    """Whether the server closes the connection after its answer (within the timeout)."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        return False
    return True


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/rpc"])
def test_a_body_that_never_finishes_gets_408_and_its_connection_back(gate_env, path):
    """Slow senders: the whole body must arrive within server.body_timeout."""
    env = {**gate_env, "GATE_SERVER__BODY_TIMEOUT": "1"}
    with GateServe(env) as gate:
        port = int(gate.url.rsplit(":", 1)[1])
        socks = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
            )
            socks.append(sock)
        started = time.monotonic()
        lines = [_status_line(sock) for sock in socks]
        waited = time.monotonic() - started
        closed = [_reads_to_eof(sock) for sock in socks]
        for sock in socks:
            sock.close()
        assert_alive(gate)
    assert lines == [b"HTTP/1.1 408 "] * 50 and all(closed)
    assert waited < 8


def test_a_burst_of_connections_is_answered_not_reset(gate_env):
    """1,000 clients connecting at once each get an HTTP answer, and the kernel's listen
    queue drops none of them (a drop is a reset or a retransmit a second later).

    Run in a network namespace of its own, so that the kernel's counters count this
    burst only: the connects go out together, faster than the server accepts.
    """
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    probe = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            f"ip link set lo up && exec {sys.executable} -m tests.e2e.burst_probe",
        ],
        env={**os.environ, **gate_env},
        capture_output=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr.decode()[-3000:]
    report = json.loads(probe.stdout)
    failures = [r for r in report["results"] if not r.startswith("HTTP/1.1 ")]
    assert report["alive"] and len(report["results"]) == 1000 and not failures, failures[:5]
    assert report["overflows"] == 0
