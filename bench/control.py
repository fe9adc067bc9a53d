"""Control-plane benchmark: what the RPC, the live events and the web UI cost, side by side.

    .venv/bin/python bench/control.py

One `gate serve` in front of nginx (a static chat completion). Prints, in one run:
- p50/p99 of JSON-RPC calls next to GET /health (the cheapest HTTP answer) as ratios;
- how late a request's `request.end` event reaches a live SSE subscriber, after the
  client has its response;
- what one live subscriber costs the API: chat-completion latency with and without one;
- the web UI's weight (every file) and how fast its page is served.
Issue 5 names no figures to reach; these are here so a regression shows.
Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import (
    REQUEST,
    TIME_LIMIT,
    pct,
    sequential_latency,
    start_gate,
    start_nginx,
    stop_cleanly_on_sigterm,
)

CALLS = 1000
EVENT_REQUESTS = 300


def timed_calls(port: int, method: str, path: str, body: str | None, count: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    samples: list[float] = []
    stop = time.monotonic() + TIME_LIMIT
    for i in range(count + 20):  # the first 20 warm up
        if time.monotonic() > stop:
            break
        began = time.perf_counter()
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, (path, response.status)
        if i >= 20:
            samples.append(time.perf_counter() - began)
    conn.close()
    return samples


def rpc_body(method: str, params: dict | None = None) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})


class Subscriber(threading.Thread):
    """Reads GET /rpc/events; records when each request.end event arrives."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.ends: list[float] = []
        self.ready = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", "/rpc/events")
        response = conn.getresponse()
        kind = ""
        while line := response.fp.readline():
            line = line.strip()
            if line.startswith(b"event: "):
                kind = line[7:].decode()
                if kind == "hello":
                    self.ready.set()
            elif line.startswith(b"data: ") and kind == "request.end":
                self.ends.append(time.perf_counter())


def event_delays(port: int) -> list[float]:
    subscriber = Subscriber(port)
    subscriber.start()
    if not subscriber.ready.wait(10):
        raise RuntimeError("no hello on /rpc/events")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    delays: list[float] = []
    stop = time.monotonic() + TIME_LIMIT
    for _ in range(EVENT_REQUESTS):
        if time.monotonic() > stop:
            break
        seen = len(subscriber.ends)
        conn.request("POST", "/v1/chat/completions", REQUEST, headers)
        conn.getresponse().read()
        answered = time.perf_counter()
        deadline = time.monotonic() + 5
        while len(subscriber.ends) == seen and time.monotonic() < deadline:
            time.sleep(0.00005)
        if len(subscriber.ends) > seen:
            delays.append(subscriber.ends[seen] - answered)
    conn.close()
    return delays


def subscriber_cost(port: int) -> tuple[list[float], list[float]]:
    """Chat-completion latency without and with one live SSE subscriber, alternating.

    The subscriber is curl in its own process, so it does not share this client's GIL."""
    quiet: list[float] = []
    watched: list[float] = []
    for _ in range(2):
        quiet += sequential_latency(port, "/v1/chat/completions", REQUEST, CALLS // 2)
        curl = subprocess.Popen(
            ["curl", "-sN", f"http://127.0.0.1:{port}/rpc/events"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # connected and past its hello
            watched += sequential_latency(port, "/v1/chat/completions", REQUEST, CALLS // 2)
        finally:
            curl.terminate()
            curl.wait(timeout=10)
    return quiet, watched


def ui_weight(port: int) -> tuple[int, int]:
    """(files, bytes) of the UI: index.html and every module it loads, transitively."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    seen: set[str] = set()
    todo = ["/"]
    total = 0
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status)
        total += len(body)
        text = body.decode(errors="replace")
        base = path.rsplit("/", 1)[0] + "/" if path != "/" else "/ui/"
        for marker in ('from "', "from '", 'href="', 'src="', 'import("'):
            for part in text.split(marker)[1:]:
                ref = part.split(marker[-1])[0]
                if ref.startswith(("http:", "https:", "data:", "#", "mailto:")) or not ref:
                    continue
                todo.append(_resolve(base, ref))
    conn.close()
    return len(seen), total


def _resolve(base: str, ref: str) -> str:
    if ref.startswith("/"):
        return ref
    parts = (base + ref).split("/")
    out: list[str] = []
    for part in parts:
        if part == "..":
            out.pop()
        elif part != ".":
            out.append(part)
    return "/".join(out)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gate-bench-control-") as tmp:
        workdir = Path(tmp)
        upstream = start_nginx(workdir)
        gate = start_gate(upstream, workdir)
        try:
            port = gate.port
            health = timed_calls(port, "GET", "/health", None, CALLS)
            rows = [("GET /health (baseline)", health)]
            for method, params in (
                ("node_status", None),
                ("list_providers", None),
                ("get_config", None),
                ("request_history", {"limit": 100}),
            ):
                rows.append(
                    (
                        f"rpc {method}",
                        timed_calls(port, "POST", "/rpc", rpc_body(method, params), CALLS),
                    )
                )
            page = timed_calls(port, "GET", "/", None, CALLS)
            rows.append(("GET / (the web UI's page)", page))
            base = pct(health, 0.5)
            print(f"Control plane benchmark: {CALLS} sequential calls each\n")
            print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'p50 / health':>13}")
            for name, samples in rows:
                print(
                    f"{name:34} {pct(samples, 0.5):8.3f} {pct(samples, 0.99):8.3f}"
                    f" {pct(samples, 0.5) / base:12.2f}x"
                )

            delays = event_delays(port)
            sequential_latency(port, "/v1/chat/completions", REQUEST, CALLS)  # warm-up
            quiet, watched = subscriber_cost(port)
            print(
                "\nrequest.end event after the client's response: "
                f"p50 {pct(delays, 0.5):.3f} ms, p99 {pct(delays, 0.99):.3f} ms "
                f"({len(delays)} requests)"
            )
            print(
                f"chat completion p50 without / with one live subscriber: "
                f"{pct(quiet, 0.5):.3f} / {pct(watched, 0.5):.3f} ms "
                f"(ratio {pct(watched, 0.5) / pct(quiet, 0.5):.2f})"
            )
            files, size = ui_weight(port)
            print(f"web UI: {files} files, {size / 1024:.1f} KiB in all, nothing fetched elsewhere")
        finally:
            for proc in (gate.proc, upstream.proc):
                proc.terminate()
                proc.wait(timeout=20)


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    main()
