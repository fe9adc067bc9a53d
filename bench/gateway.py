"""Local gateway benchmark: the same load straight to an upstream, through Gate, and through
LiteLLM's proxy (when it is installed), side by side in one run.

    .venv/bin/python bench/gateway.py [--litellm PATH_TO_litellm_EXECUTABLE]
                                      [--against TREE] [--rounds N]

`--against TREE` also measures the Gate of another checkout (e.g. a `git worktree` of
the commit before a change), in turn with this one, so both rows come from one sitting
of this noisy machine; `--rounds N` measures each proxy N times in turn and prints the
median of each column.

The upstream is nginx answering a static chat completion (one port) or a static SSE stream
(another port), so it is never the bottleneck (nginx alone served ~49,000 req/s here). Load:
sequential requests on one keep-alive connection (added latency p50/p99), wrk at 32
connections (requests/s), sequential streams (time to first byte). Then RSS of each proxy
and seconds from exec to ready. Targets (issue 3, this 2-core machine): added p50 <= 1 ms
and p99 <= 3 ms; >= 10x LiteLLM's requests/s; RSS <= 80 MB; ready <= 1 s.
Every loop is bounded in count and time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench-json",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
)
STREAM = (
    "".join(
        "data: "
        + json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "bench-sse",
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
        )
        + "\n\n"
        for word in ("Hello", " there", "!")
    )
    + "data: [DONE]\n\n"
)
REQUEST = json.dumps({"model": "bench-json", "messages": [{"role": "user", "content": "Hi"}]})
STREAM_REQUEST = json.dumps(
    {"model": "bench-sse", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
)
# The Responses API, translated: engines that answer 404 to /v1/responses (as
# llama-cpp-python's server does) and a chat completion or stream to anything else.
RESPONSES_REQUEST = json.dumps({"model": "bench-resp-json", "input": "Hi"})
RESPONSES_STREAM_REQUEST = json.dumps({"model": "bench-resp-sse", "input": "Hi", "stream": True})
SEQUENTIAL = 2000
STREAMS = 300
WRK_SECONDS = 5
TIME_LIMIT = 30.0


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM (`timeout`, a CI runner) ends the run like Ctrl-C does: through the
    `finally` blocks, so no nginx or Gate started by the benchmark is left running."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


@dataclass
class Upstream:
    json_port: int
    sse_port: int
    proc: subprocess.Popen[bytes]
    resp_json_port: int = 0
    resp_sse_port: int = 0


def start_nginx(workdir: Path) -> Upstream:
    json_port, sse_port = free_port(), free_port()
    resp_json_port, resp_sse_port = free_port(), free_port()
    conf = workdir / "nginx.conf"

    def server(port: int, model: str, body: str, ctype: str, responses: bool = True) -> str:
        models = json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]})
        lacking = "" if responses else "location = /v1/responses { return 404; }"
        return f"""
  server {{
    listen 127.0.0.1:{port};
    location = /v1/models {{ default_type application/json; return 200 '{models}'; }}
    {lacking}
    location / {{ default_type {ctype}; return 200 '{nginx_escape(body)}'; }}
  }}"""

    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {workdir};
  {server(json_port, "bench-json", COMPLETION, "application/json")}
  {server(sse_port, "bench-sse", STREAM, "text/event-stream")}
  {server(resp_json_port, "bench-resp-json", COMPLETION, "application/json", False)}
  {server(resp_sse_port, "bench-resp-sse", STREAM, "text/event-stream", False)}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(workdir)], stderr=subprocess.DEVNULL
    )
    wait_http(json_port, "/v1/models", deadline=time.monotonic() + 10)
    return Upstream(json_port, sse_port, proc, resp_json_port, resp_sse_port)


def wait_http(port: int, path: str, deadline: float) -> None:
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered on port {port}{path}")
        time.sleep(0.005)


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    ready_s: float
    chat_path: str = "/v1/chat/completions"

    def rss_mb(self) -> float:
        """Resident memory of the proxy and its children (LiteLLM runs workers)."""
        total = 0
        for pid in [self.proc.pid, *children(self.proc.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(r"VmRSS:\s+(\d+)", status)
            total += int(match.group(1)) if match else 0
        return total / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    kids = [int(p) for p in out.split()]
    return kids + [g for k in kids for g in children(k)]


def spawn_gate(
    *args: str, env: dict[str, str], tree: Path | None = None, stdout=subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """`python -m gate ARGS` of this checkout, or of `tree` (run there, it imports that
    tree's package first), its stderr discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "gate", *args],
        env=env,
        cwd=tree or Path(__file__).resolve().parents[1],
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )


def start_gate(
    upstream: Upstream, workdir: Path, tree: Path | None = None, name: str = "Gate"
) -> Proxy:
    """`gate serve` of this checkout, or of `tree`."""
    port = free_port()
    config = workdir / "gate.toml"
    config.write_text(f"""
[server]
bind = "127.0.0.1:{port}"
[providers]
health_interval = 60.0
[[providers.engines]]
name = "json"
kind = "openai_compatible"
base_url = "http://127.0.0.1:{upstream.json_port}"
[[providers.engines]]
name = "sse"
kind = "openai_compatible"
base_url = "http://127.0.0.1:{upstream.sse_port}"
[[providers.engines]]
name = "resp-json"
kind = "openai_compatible"
base_url = "http://127.0.0.1:{upstream.resp_json_port}"
[[providers.engines]]
name = "resp-sse"
kind = "openai_compatible"
base_url = "http://127.0.0.1:{upstream.resp_sse_port}"
""")
    env = {
        **os.environ,
        # A data dir per tree: an older tree refuses a database a newer one migrated.
        "XDG_DATA_HOME": str(workdir / f"gate-data-{'against' if tree else 'this'}"),
        "XDG_CONFIG_HOME": str(workdir / "gate-config"),
        "GATE_LOG": "warning",
    }
    began = time.monotonic()
    proc = spawn_gate("serve", "--config", str(config), env=env, tree=tree)
    wait_http(port, "/health", deadline=began + 30)
    return Proxy(name, port, proc, time.monotonic() - began)


def start_litellm(executable: str, upstream: Upstream, workdir: Path) -> Proxy:
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(f"""
model_list:
  - model_name: bench-json
    litellm_params:
      model: openai/bench-json
      api_base: http://127.0.0.1:{upstream.json_port}/v1
      api_key: unused
  - model_name: bench-sse
    litellm_params:
      model: openai/bench-sse
      api_base: http://127.0.0.1:{upstream.sse_port}/v1
      api_key: unused
""")
    # No auth on either side (Gate serves loopback without keys by default); LiteLLM
    # needs its local-development switch to start without a master key.
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    began = time.monotonic()
    proc = subprocess.Popen(
        [
            executable,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(port, "/health/liveliness", deadline=began + 120)
    return Proxy("LiteLLM", port, proc, time.monotonic() - began)


def sequential_latency(port: int, path: str, body: str, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    samples: list[float] = []
    for _ in range(20):  # warm up the connection and both sides' pools
        conn.request("POST", path, body, headers)
        conn.getresponse().read()
    stop = time.monotonic() + TIME_LIMIT
    while len(samples) < count and time.monotonic() < stop:
        began = time.perf_counter()
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        response.read()
        samples.append(time.perf_counter() - began)
        assert response.status == 200, response.status
    conn.close()
    return samples


def first_byte(port: int, path: str, body: str, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    samples: list[float] = []
    stop = time.monotonic() + TIME_LIMIT
    while len(samples) < count and time.monotonic() < stop:
        began = time.perf_counter()
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        response.read(1)
        samples.append(time.perf_counter() - began)
        response.read()
    conn.close()
    return samples


def wrk_rps(port: int, path: str, body: str, workdir: Path) -> float:
    script = workdir / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            "-c32",
            f"-d{WRK_SECONDS}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=WRK_SECONDS + 30,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"   (wrk saw {errors.group(1)} non-2xx responses on port {port})")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--litellm",
        default=shutil.which("litellm")
        or (
            "/opt/litellm-venv/bin/litellm"
            if Path("/opt/litellm-venv/bin/litellm").exists()
            else None
        ),
    )
    parser.add_argument("--against", type=Path, help="another checkout's Gate to measure too")
    parser.add_argument("--rounds", type=int, default=1, help="measure each proxy N times")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install nginx wrk")

    with tempfile.TemporaryDirectory(prefix="gate-bench-") as tmp:
        workdir = Path(tmp)
        upstream = start_nginx(workdir)
        try:
            # Each proxy runs alone while it is measured: an idle LiteLLM still uses CPU.
            starters = [lambda: start_gate(upstream, workdir)]
            if args.against:
                against = args.against.resolve()
                starters.append(lambda: start_gate(upstream, workdir, against, "Gate (against)"))
            if args.litellm:
                starters.append(lambda: start_litellm(args.litellm, upstream, workdir))
            run(upstream, starters, workdir, max(1, args.rounds))
        finally:
            upstream.proc.terminate()
            upstream.proc.wait(timeout=10)


def measure(proxy: Proxy, workdir: Path) -> tuple[float, ...]:
    path = "/v1/chat/completions"
    latency = sequential_latency(proxy.port, path, REQUEST, SEQUENTIAL)
    ttfb = first_byte(proxy.port, path, STREAM_REQUEST, STREAMS)
    rps = wrk_rps(proxy.port, path, REQUEST, workdir)
    return (
        pct(latency, 0.5),
        pct(latency, 0.99),
        rps,
        pct(ttfb, 0.5),
        proxy.rss_mb(),
        proxy.ready_s,
    )


def answers_responses(proxy: Proxy) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request(
            "POST", "/v1/responses", RESPONSES_REQUEST, {"content-type": "application/json"}
        )
        response = conn.getresponse()
        response.read()
        return response.status == 200
    finally:
        conn.close()


def measure_responses(proxy: Proxy) -> tuple[float, ...]:
    """The Responses API through Gate to an engine without it (translated to chat
    completions; the first request learns that, in the warm-up): p50, p99, stream TTFB."""
    latency = sequential_latency(proxy.port, "/v1/responses", RESPONSES_REQUEST, SEQUENTIAL)
    ttfb = first_byte(proxy.port, "/v1/responses", RESPONSES_STREAM_REQUEST, STREAMS)
    return pct(latency, 0.5), pct(latency, 0.99), pct(ttfb, 0.5)


def run(upstream: Upstream, starters: list, workdir: Path, rounds: int = 1) -> None:
    path = "/v1/chat/completions"
    direct = sequential_latency(upstream.json_port, path, REQUEST, SEQUENTIAL)
    direct_ttfb = first_byte(upstream.sse_port, path, STREAM_REQUEST, STREAMS)
    direct_rps = wrk_rps(upstream.json_port, path, REQUEST, workdir)
    rows: dict[str, tuple] = {
        "direct (nginx)": (
            pct(direct, 0.5),
            pct(direct, 0.99),
            direct_rps,
            pct(direct_ttfb, 0.5),
            None,
            None,
        )
    }
    measured: dict[str, list[tuple[float, ...]]] = {}
    translated: dict[str, list[tuple[float, ...]]] = {}
    for _ in range(rounds):
        for start in starters:
            proxy = start()
            try:
                measured.setdefault(proxy.name, []).append(measure(proxy, workdir))
                # A tree from before the Responses translation answers 404 there.
                if proxy.name.startswith("Gate") and answers_responses(proxy):
                    translated.setdefault(proxy.name, []).append(measure_responses(proxy))
            finally:
                proxy.stop()
    for name, runs in measured.items():
        rows[name] = tuple(statistics.median(column) for column in zip(*runs, strict=True))

    base_p50, base_p99 = rows["direct (nginx)"][0], rows["direct (nginx)"][1]
    print(
        "Local gateway benchmark: sequential latency on one keep-alive connection "
        f"({SEQUENTIAL} requests), wrk -c32 for {WRK_SECONDS}s, {STREAMS} sequential streams\n"
    )
    head = (
        f"{'':16}{'p50 ms':>8}{'p99 ms':>8}{'+p50 ms':>9}{'+p99 ms':>9}"
        f"{'req/s':>9}{'TTFB ms':>9}{'RSS MB':>8}{'ready s':>9}"
    )
    if rounds > 1:
        print(f"(each figure the median of {rounds} rounds, the proxies taking turns)")
    print(head)
    for name, (p50, p99, rps, ttfb, rss, ready) in rows.items():
        added = name != "direct (nginx)"
        print(
            f"{name:16}{p50:8.3f}{p99:8.3f}"
            f"{(p50 - base_p50) if added else 0:9.3f}{(p99 - base_p99) if added else 0:9.3f}"
            f"{rps:9.0f}{ttfb:9.3f}"
            f"{'' if rss is None else f'{rss:8.1f}'}{'' if ready is None else f'{ready:9.2f}'}"
        )
    gate = rows["Gate"]
    print("\nTargets (this 2-core machine):")
    print(
        f"  added p50 <= 1 ms: {gate[0] - base_p50:.3f} ms   "
        f"added p99 <= 3 ms: {gate[1] - base_p99:.3f} ms"
    )
    if "LiteLLM" in rows:
        ratio = gate[2] / rows["LiteLLM"][2] if rows["LiteLLM"][2] else float("inf")
        print(f"  >= 10x LiteLLM's req/s: {ratio:.1f}x ({gate[2]:.0f} vs {rows['LiteLLM'][2]:.0f})")
    else:
        print("  >= 10x LiteLLM's req/s: LiteLLM not installed (pass --litellm PATH)")
    print(f"  RSS <= 80 MB: {gate[4]:.1f} MB   ready <= 1 s: {gate[5]:.2f} s")
    for name, runs in translated.items():
        p50, p99, ttfb = (statistics.median(column) for column in zip(*runs, strict=True))
        chat = rows[name]
        print(
            f"\n{name}, /v1/responses translated to chat completions (an engine without it): "
            f"p50 {p50:.3f} ms, p99 {p99:.3f} ms, stream TTFB {ttfb:.3f} ms; "
            f"over the same engine's chat completions through Gate: p50 {p50 - chat[0]:+.3f} "
            f"ms ({p50 / chat[0]:.2f}x), TTFB {ttfb - chat[3]:+.3f} ms"
        )
    if "Gate (against)" in rows:
        other = rows["Gate (against)"]
        print(
            f"\nThis tree against the other: added p50 {gate[0] - base_p50:.3f} vs "
            f"{other[0] - base_p50:.3f} ms, added p99 {gate[1] - base_p99:.3f} vs "
            f"{other[1] - base_p99:.3f} ms, req/s ratio {gate[2] / other[2]:.2f}"
        )


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    main()
