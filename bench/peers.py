"""Peer hop benchmark: the same requests through one Gate (local path) and through a second
Gate that reaches the first over iroh (one peer hop), side by side in one run.

    .venv/bin/python bench/peers.py [--against TREE]

`--against TREE` runs a second pair of nodes from another checkout (e.g. a `git
worktree` of the commit before a change); all four paths take turns in the same blocks,
so the two trees' figures come from one sitting of this noisy machine.

Upstream: nginx answering a static chat completion, and a static SSE stream of many small
events. Prints added latency p50/p99 of the hop for sequential requests, and streamed
events/s through each path. Target (issue 4): one hop adds <= 2 ms at p50 on loopback.

The machine is shared and its speed drifts from second to second, so the two paths are
not measured one after the other: sequential requests alternate between them in blocks of
BLOCK, each path on its own keep-alive connection, and both see the same conditions.
Loopback only, relays and discovery off; every loop bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import (
    REQUEST,
    TIME_LIMIT,
    free_port,
    nginx_escape,
    pct,
    spawn_gate,
    stop_cleanly_on_sigterm,
    wait_http,
)
from bench.turns import taking_turns

EVENTS = 2000
STREAM_BODY = (
    "".join(
        "data: "
        + json.dumps(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}],
            }
        )
        + "\n\n"
        for _ in range(EVENTS)
    )
    + "data: [DONE]\n\n"
)
SEQUENTIAL = 2000  # requests per path
BLOCK = 50  # sequential requests to one path before switching to the other


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    json_port, sse_port = free_port(), free_port()
    completion = json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "bench-json",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Hello"},
                }
            ],
        }
    )

    def server(port: int, model: str, body: str, ctype: str) -> str:
        models = json.dumps({"data": [{"id": model}]})
        return f"""
  server {{ listen 127.0.0.1:{port};
    location = /v1/models {{ default_type application/json; return 200 '{models}'; }}
    location / {{ default_type {ctype}; return 200 '{nginx_escape(body)}'; }} }}"""

    # The stream is too long for a `return` directive: nginx serves it as a file, and a
    # POST to a static file (405) is turned into a 200 with the file by error_page.
    stream_file = workdir / "sse" / "v1" / "chat" / "completions"
    stream_file.parent.mkdir(parents=True)
    stream_file.write_text(STREAM_BODY)
    sse_server = f"""
  server {{ listen 127.0.0.1:{sse_port}; root {workdir}/sse;
    location = /v1/models {{ default_type application/json;
                             return 200 '{{"data":[{{"id":"bench-sse"}}]}}'; }}
    location / {{ default_type text/event-stream; error_page 405 =200 $uri; }} }}"""

    (workdir / "nginx.conf").write_text(f"""
daemon off; worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/err.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {workdir};
  {server(json_port, "bench-json", completion, "application/json")}
  {sse_server} }}
""")
    proc = subprocess.Popen(
        ["nginx", "-c", str(workdir / "nginx.conf"), "-p", str(workdir)], stderr=subprocess.DEVNULL
    )
    wait_http(json_port, "/v1/models", time.monotonic() + 10)
    return proc, json_port, sse_port


HERE = Path(__file__).resolve().parents[1]


def identity(env: dict[str, str], tree: Path = HERE) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gate", "identity", "show", "--json"],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["node_id"]


def start_gate(
    env: dict[str, str], config: str, workdir: Path, tree: Path = HERE
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    path = workdir / f"gate-{port}.toml"
    path.write_text(f'[server]\nbind = "127.0.0.1:{port}"\n{config}')
    proc = spawn_gate("serve", "--config", str(path), env=env, tree=tree)
    wait_http(port, "/health", time.monotonic() + 30)
    return proc, port


def wait_connected(port: int, peer: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/health")
        peers = json.loads(conn.getresponse().read()).get("peers", {})
        if peers.get(peer, {}).get("status", {}).get("type") == "connected":
            return
        time.sleep(0.1)
    raise RuntimeError("the peers did not connect")


def interleaved_latency(ports: dict[str, int], count: int) -> dict[str, list[float]]:
    """Seconds per sequential request to each port, the ports taking turns in blocks."""
    headers = {"content-type": "application/json"}
    conns = {
        name: http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for name, port in ports.items()
    }

    def one(name: str) -> float:
        began = time.perf_counter()
        conns[name].request("POST", "/v1/chat/completions", REQUEST, headers)
        response = conns[name].getresponse()
        response.read()
        assert response.status == 200, response.status
        return time.perf_counter() - began

    try:  # the warm-up fills the connections and both nodes' pools
        return taking_turns(list(ports), count, one, block=BLOCK, warmup=20, time_limit=TIME_LIMIT)
    finally:
        for conn in conns.values():
            conn.close()


def stream_rate(port: int, rounds: int = 20) -> float:
    """Events per second over whole streams of EVENTS events."""
    body = json.dumps({"model": "bench-sse", "stream": True, "messages": []})
    events, seconds = 0, 0.0
    stop = time.monotonic() + TIME_LIMIT
    for _ in range(rounds):
        if time.monotonic() > stop:
            break
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        began = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        data = conn.getresponse().read()
        seconds += time.perf_counter() - began
        events += len(re.findall(rb"^data: ", data, flags=re.M))
        conn.close()
    return events / seconds


def start_pair(
    tree: Path, workdir: Path, engines: str, procs: list[subprocess.Popen]
) -> tuple[int, int]:
    """Node A (the engines) and node B (trusts A, no engines) of `tree`, connected; returns
    their HTTP ports. Their processes go into `procs`."""
    # iroh's relay setting had another name before the relay subsystem: use the tree's.
    new_name = "iroh_relay_mode" in (tree / "gate" / "config.py").read_text()
    base = {
        **os.environ,
        "GATE_LOG": "warning",
        "GATE_P2P__BIND_HOST": "127.0.0.1",
        f"GATE_P2P__{'IROH_RELAY_MODE' if new_name else 'RELAY_MODE'}": "disabled",
        "GATE_P2P__DISCOVERY": "false",
    }
    home = workdir / f"nodes-{len(procs)}"
    env_a = {**base, "XDG_DATA_HOME": str(home / "a"), "XDG_CONFIG_HOME": str(home / "a")}
    env_b = {**base, "XDG_DATA_HOME": str(home / "b"), "XDG_CONFIG_HOME": str(home / "b")}
    id_a, id_b = identity(env_a, tree), identity(env_b, tree)
    port_a, port_b = free_udp_port(), free_udp_port()
    trust_b = json.dumps([id_b])
    gate_a, http_a = start_gate(
        {**env_a, "GATE_P2P__PORT": str(port_a), "GATE_P2P__TRUSTED_PEERS": trust_b},
        engines,
        workdir,
        tree,
    )
    procs.append(gate_a)
    trust_a = json.dumps([f"{id_a}@127.0.0.1:{port_a}"])
    gate_b, http_b = start_gate(
        {**env_b, "GATE_P2P__PORT": str(port_b), "GATE_P2P__TRUSTED_PEERS": trust_a},
        "",
        workdir,
        tree,
    )
    procs.append(gate_b)
    wait_connected(http_b, id_a)
    return http_a, http_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout's Gate to measure too")
    args = parser.parse_args()
    trees = {"": HERE}
    if args.against:
        trees[" (against)"] = args.against.resolve()
    with tempfile.TemporaryDirectory(prefix="gate-bench-peers-") as tmp:
        workdir = Path(tmp)
        nginx, json_port, sse_port = start_nginx(workdir)
        engines = (
            f"[[providers.engines]]\nname = 'json'\nkind = 'openai_compatible'\n"
            f"base_url = 'http://127.0.0.1:{json_port}'\n"
            f"[[providers.engines]]\nname = 'sse'\nkind = 'openai_compatible'\n"
            f"base_url = 'http://127.0.0.1:{sse_port}'\n"
        )
        procs: list[subprocess.Popen] = []
        try:
            ports: dict[str, int] = {}
            for tag, tree in trees.items():
                ports[f"local{tag}"], ports[f"hop{tag}"] = start_pair(tree, workdir, engines, procs)
            latency = interleaved_latency(ports, SEQUENTIAL)
            rates = {name: stream_rate(port) for name, port in ports.items()}
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=15)
            nginx.terminate()
            nginx.wait(timeout=10)

    print(
        f"Peer hop benchmark: {SEQUENTIAL} sequential requests per path, the paths taking "
        f"turns in blocks of {BLOCK}; streams of {EVENTS} events\n"
    )
    print(f"{'':40}{'p50 ms':>9}{'p99 ms':>9}{'events/s':>11}")
    for tag in trees:
        for name, label in (
            ("local", "local (client -> A)"),
            ("hop", "one hop (client -> B -> A)"),
        ):
            samples = latency[name + tag]
            print(
                f"{label + tag:40}{pct(samples, 0.5):9.3f}{pct(samples, 0.99):9.3f}"
                f"{rates[name + tag]:11.0f}"
            )
    print()
    for tag in trees:
        local, hop = latency["local" + tag], latency["hop" + tag]
        added50, added99 = pct(hop, 0.5) - pct(local, 0.5), pct(hop, 0.99) - pct(local, 0.99)
        ratio = rates["hop" + tag] / rates["local" + tag]
        print(
            f"added by the hop{tag}: p50 {added50:.3f} ms, p99 {added99:.3f} ms "
            f"(target: p50 <= 2 ms); streamed events/s ratio {ratio:.2f}"
        )


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    main()
