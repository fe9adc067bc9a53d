"""Relay benchmark: HTTPS to a node through `gate relay serve`, and the same HTTPS through
nginx's `stream` module with `ssl_preread` (the industry's SNI passthrough), side by side
in one run.

    .venv/bin/python bench/relay.py [--max-concurrent 1000]

Needs nginx with its stream module (Debian: `apt-get install libnginx-mod-stream`); the
benchmark starts its own nginx with its own config in a temp dir.

Both paths end at the same node TLS stack: the relay door (its certificate, trio's TLS,
the relay door's router). The relay reaches it over an iroh stream (a tls_proxy stream,
spec §7.4); nginx reaches it on the node's `tls.listen` TCP port, the same door with no
relay in between. So what differs is the passthrough alone: nginx's TCP splice in C, or
the relay's SNI front and iroh hop in Python and Rust.

The large body: an engine double (nginx, plain HTTP) serving a static SSE stream of
BIG_EVENTS events of ~16 KiB each, which the node relays byte for byte as the answer
to a streamed chat completion.

Measured, the paths taking turns where the machine's drift could favour one:
- handshake: TCP connect + TLS handshake (client side, TCP_NODELAY as browsers set it)
- request: `GET /health` on a kept-alive TLS connection
- one connection's throughput (MB/s of the large streamed answer)
- the most concurrent TLS connections held, each answering a request, with no failure
  (stepping up to --max-concurrent)
- relay RSS per open connection, relay CPU per MB (and nginx's, for scale)
- ACME (issue 14; alone with --acme-only): seconds from a fresh node's start (a new
  identity, no certificate) to its first HTTPS answer through the relay that a client
  trusting only the CA's root accepts, with pebble as the CA (no validation sleeps) and
  the relay's challtestsrv DNS; and the cost of a certificate reload: the time of one
  install, and requests on a connection kept open across renewals (pebble's
  certificates then live ACME_VALIDITY seconds, renewed at two thirds).
Targets (issue 13, this 2-core machine): one connection >= 100 MB/s; 1,000 concurrent
connections with 0 failures; handshake p50 through the relay <= 2x nginx's; <= 100 KB
of relay RSS per open connection. Loopback only; every loop bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gateway import free_port, pct, spawn_gate, stop_cleanly_on_sigterm, wait_http
from bench.turns import taking_turns as taking_turns_of
from bench.turns import turn_order
from tests.local_ca import LocalCA

HERE = Path(__file__).resolve().parents[1]
DOMAIN = "relay.bench"
HANDSHAKES = 300  # per path
REQUESTS = 1000  # per path
BLOCK = 50  # sequential operations on one path before the other takes its turn
BIG_EVENTS = 2048  # ~32 MiB streamed answer
BIG_CONTENT = "x" * 16_000
THROUGHPUT_ROUNDS = 5
TIME_LIMIT = 60.0  # seconds, for each measurement loop
STEPS = (50, 100, 200, 500, 1000)
ACME_RUNS = 3  # fresh nodes timed to their first trusted answer
ACME_VALIDITY = 6  # seconds: pebble's certificates, so renewals come every ~4 s
RELOADS = 200  # installs timed in process
KEPT_WINDOW = 15.0  # seconds of requests on one open connection across renewals


# A node on loopback alone: no fixed port, no iroh relays, no discovery.
LOOPBACK_NODE = {
    "GATE_P2P__BIND_HOST": "127.0.0.1",
    "GATE_P2P__IROH_RELAY_MODE": "disabled",
    "GATE_P2P__DISCOVERY": "false",
    "GATE_P2P__PORT": "0",
}


def relay_env(base: dict[str, str], port: int, data_dir: Path) -> dict[str, str]:
    """`gate relay serve` for DOMAIN on TCP `port`, iroh on loopback alone."""
    return {
        **base,
        "GATE_RELAYD_DOMAIN": DOMAIN,
        "GATE_RELAYD_LISTEN": f"127.0.0.1:{port}",
        "GATE_RELAYD_P2P_PORT": "0",
        "GATE_RELAYD_P2P_BIND_HOST": "127.0.0.1",
        "GATE_RELAYD_IROH_RELAY_MODE": "disabled",
        "GATE_RELAYD_DISCOVERY": "false",
        "GATE_RELAYD_DATA_DIR": str(data_dir),
        "GATE_RELAYD_STATUS_BIND": "127.0.0.1:0",
    }


def start_relay(env: dict[str, str], out: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`gate relay serve`, its stdout in `out`; returns it and its P2P address, once it
    has printed that."""
    relay = spawn_gate("relay", "serve", env=env, stdout=out.open("wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.1)
        for line in out.read_text().splitlines():
            if line.startswith("P2P address "):
                return relay, line.removeprefix("P2P address ").strip()
    stop_all([relay])
    raise RuntimeError("the relay did not start")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """The last started first."""
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def gate(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-m", "gate", *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def start_engine(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nginx as an engine: a static SSE stream of BIG_EVENTS events for any POST."""
    port = free_port()
    event = json.dumps(
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": BIG_CONTENT}, "finish_reason": None}],
        }
    )
    stream_file = workdir / "sse" / "v1" / "chat" / "completions"
    stream_file.parent.mkdir(parents=True)
    with stream_file.open("w") as f:
        for _ in range(BIG_EVENTS):
            f.write(f"data: {event}\n\n")
        f.write("data: [DONE]\n\n")
    (workdir / "engine.conf").write_text(f"""
daemon off; worker_processes 1; pid {workdir}/engine.pid; error_log {workdir}/engine.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {workdir};
  server {{ listen 127.0.0.1:{port}; root {workdir}/sse;
    location = /v1/models {{ default_type application/json;
                             return 200 '{{"data":[{{"id":"bench-big"}}]}}'; }}
    location / {{ default_type text/event-stream; error_page 405 =200 $uri; }} }} }}
""")
    proc = subprocess.Popen(
        ["nginx", "-c", str(workdir / "engine.conf"), "-p", str(workdir)],
        stderr=subprocess.DEVNULL,
    )
    wait_http(port, "/v1/models", time.monotonic() + 10)
    return proc, port


def start_passthrough(workdir: Path, node_tls_port: int) -> tuple[subprocess.Popen[bytes], int]:
    """nginx's stream module: raw TLS routed by SNI (ssl_preread) to the node's TLS port."""
    port = free_port()
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"
    load = f"load_module {module};" if Path(module).exists() else ""
    domain = DOMAIN.replace(".", "\\.")
    (workdir / "stream.conf").write_text(f"""
{load}
daemon off; worker_processes 1; pid {workdir}/stream.pid; error_log {workdir}/stream.log;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
stream {{
  map $ssl_preread_server_name $node {{
    "~^[a-z2-7]{{52}}\\.{domain}$" 127.0.0.1:{node_tls_port};
    default 127.0.0.1:9;
  }}
  server {{ listen 127.0.0.1:{port} backlog=4096; ssl_preread on; proxy_pass $node; }}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-c", str(workdir / "stream.conf"), "-p", str(workdir)],
        stderr=(workdir / "stream.stderr").open("wb"),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(
        "nginx's stream module did not start: " + (workdir / "stream.stderr").read_text()
    )


class Setup:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        base = {
            **os.environ,
            "GATE_LOG": "warning",
            "XDG_DATA_HOME": str(self.workdir / "data"),
            "XDG_CONFIG_HOME": str(self.workdir / "config"),
        }
        engine, engine_port = start_engine(self.workdir)
        self.procs.append(engine)
        relay_port = free_port()
        env = {
            **relay_env(base, relay_port, self.workdir / "relay"),
            # Every connection comes from 127.0.0.1 to one node: the caps (256 per client
            # address, 1,024 per node) would stop the concurrency steps, which measure the
            # relay, not its caps.
            "GATE_RELAYD_MAX_CONNECTIONS": "100000",
            "GATE_RELAYD_MAX_CONNECTIONS_PER_CLIENT": "100000",
            "GATE_RELAYD_MAX_CONNECTIONS_PER_NODE": "100000",
        }
        self.relay, relay_address = start_relay(env, self.workdir / "relay.out")
        self.procs.append(self.relay)

        node_env = {**base, **LOOPBACK_NODE}
        self.node_id = json.loads(gate("identity", "show", "--json", env=node_env))["node_id"]
        self.hostname = f"{self.node_id}.{DOMAIN}"
        http_port, self.tls_port = free_port(), free_port()
        ca = LocalCA("Gate relay bench CA")
        cert_file, key_file = ca.issue(self.hostname, self.workdir / "tls")
        self.context = ssl.create_default_context(cadata=ca.pem())
        config = self.workdir / "gate.toml"
        config.write_text(
            f'[server]\nbind = "127.0.0.1:{http_port}"\n'
            f"[[providers.engines]]\nname = 'big'\nkind = 'openai_compatible'\n"
            f"base_url = 'http://127.0.0.1:{engine_port}'\n"
            f"[relay]\nenabled = true\nservers = [{json.dumps(relay_address)}]\n"
            f"[tls]\ncert_file = {json.dumps(str(cert_file))}\n"
            f"key_file = {json.dumps(str(key_file))}\nlisten = '127.0.0.1:{self.tls_port}'\n"
        )
        created = gate(
            "keys",
            "create",
            "bench",
            "--json",
            env={**node_env, "GATE_SERVER__BIND": "127.0.0.1:9"},
        )
        self.key = json.loads(created)["key"]
        self.node = spawn_gate("serve", "--config", str(config), env=node_env)
        self.procs.append(self.node)
        wait_http(http_port, "/health", time.monotonic() + 30)
        self.nginx, nginx_port = start_passthrough(self.workdir, self.tls_port)
        self.procs.append(self.nginx)
        self.ports = {"relay": relay_port, "nginx": nginx_port}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # routed once the node has registered
            try:
                if self.get("relay", "/health")[0] == 200:
                    break
            except (OSError, ssl.SSLError):
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("the relay never routed the node's name")
        # the engine's model known to the node
        while (
            time.monotonic() < deadline and b"bench-big" not in self.get("nginx", "/v1/models")[1]
        ):
            time.sleep(0.2)

    def close(self) -> None:
        stop_all(self.procs)

    def connect(self, path: str) -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", self.ports[path]), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(sock, server_hostname=self.hostname)

    def https(self, path: str) -> http.client.HTTPSConnection:
        setup = self

        class Connection(http.client.HTTPSConnection):
            def connect(self) -> None:
                self.sock = setup.connect(path)
                self.reconnects = getattr(self, "reconnects", -1) + 1

        return Connection(self.hostname, timeout=30, context=self.context)

    def get(self, path: str, target: str) -> tuple[int, bytes]:
        conn = self.https(path)
        try:
            conn.request("GET", target, headers={"Authorization": f"Bearer {self.key}"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def nginx_worker(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0]) if children else master


def taking_turns(count: int, one) -> dict[str, list[float]]:
    """`one(path)` seconds, the two paths taking turns in blocks of BLOCK."""
    return taking_turns_of(
        ("relay", "nginx"), count, one, block=BLOCK, warmup=10, time_limit=TIME_LIMIT
    )


def handshakes(setup: Setup) -> dict[str, list[float]]:
    def one(path: str) -> float:
        began = time.perf_counter()
        sock = setup.connect(path)
        seconds = time.perf_counter() - began
        sock.close()
        return seconds

    return taking_turns(HANDSHAKES, one)


def requests(setup: Setup) -> dict[str, list[float]]:
    conns = {path: setup.https(path) for path in ("relay", "nginx")}
    headers = {"Authorization": f"Bearer {setup.key}"}

    def one(path: str) -> float:
        began = time.perf_counter()
        conns[path].request("GET", "/health", headers=headers)
        response = conns[path].getresponse()
        response.read()
        assert response.status == 200, response.status
        return time.perf_counter() - began

    try:
        return taking_turns(REQUESTS, one)
    finally:
        for path, conn in conns.items():
            if getattr(conn, "reconnects", 0):  # the request times then include handshakes
                print(f"warning: {path} connection reconnected {conn.reconnects} times")
            conn.close()


BIG_REQUEST = json.dumps({"model": "bench-big", "stream": True, "messages": []})


def throughput(setup: Setup) -> dict[str, tuple[float, float, float, float]]:
    """MB/s of one connection's large answer, best and median of THROUGHPUT_ROUNDS, the
    CPU seconds per MB of the passthrough (the relay, or nginx's worker) and of the node
    behind it, over the rounds. The node's is there because it bounds the throughput:
    the same node behind the two passthroughs spends more per MB writing to iroh."""
    worker = nginx_worker(setup.nginx.pid)
    pids = {"relay": setup.relay.pid, "nginx": worker}
    result: dict[str, list[float]] = {"relay": [], "nginx": []}
    cpu = {"relay": 0.0, "nginx": 0.0}
    node_cpu = {"relay": 0.0, "nginx": 0.0}
    moved = {"relay": 0, "nginx": 0}
    headers = {"Authorization": f"Bearer {setup.key}", "content-type": "application/json"}
    stop = time.monotonic() + TIME_LIMIT
    for round_ in range(THROUGHPUT_ROUNDS):
        if time.monotonic() > stop:
            break
        for path in turn_order(("relay", "nginx"), round_):
            conn = setup.https(path)
            before = cpu_seconds(pids[path])
            node_before = cpu_seconds(setup.node.pid)
            began = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", BIG_REQUEST, headers)
            response = conn.getresponse()
            size = 0
            while chunk := response.read(1 << 20):
                size += len(chunk)
            seconds = time.perf_counter() - began
            cpu[path] += cpu_seconds(pids[path]) - before
            node_cpu[path] += cpu_seconds(setup.node.pid) - node_before
            moved[path] += size
            assert response.status == 200 and size > BIG_EVENTS * len(BIG_CONTENT), size
            result[path].append(size / seconds / 1e6)
            conn.close()
    return {
        path: (
            max(rates),
            sorted(rates)[len(rates) // 2],
            cpu[path] / (moved[path] / 1e6),
            node_cpu[path] / (moved[path] / 1e6),
        )
        for path, rates in result.items()
    }


async def hold(setup: Setup, path: str, count: int) -> tuple[int, int, int]:
    """Open `count` TLS connections at once, hold them all open, then each sends one
    request; returns (failures, relay RSS KB while held, relay RSS KB before)."""
    rss_before = rss_kb(setup.relay.pid)
    opened = 0
    failures = 0
    all_open = trio.Event()
    release = trio.Event()
    request = (
        f"GET /health HTTP/1.1\r\nHost: {setup.hostname}\r\n"
        f"Authorization: Bearer {setup.key}\r\n\r\n"
    ).encode()
    limiter = trio.CapacityLimiter(64)  # handshakes in flight: a browser crowd, not a SYN flood

    async def one() -> None:
        nonlocal opened, failures
        stream = None
        try:
            async with limiter:
                tcp = await trio.open_tcp_stream("127.0.0.1", setup.ports[path])
                stream = trio.SSLStream(tcp, setup.context, server_hostname=setup.hostname)
                await stream.do_handshake()
            opened += 1
            if opened == count:
                all_open.set()
            await release.wait()
            await stream.send_all(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                failures += 1
        except (OSError, trio.BrokenResourceError, ssl.SSLError):
            failures += 1
            opened += 1
            if opened == count:
                all_open.set()
        finally:
            if stream is not None:
                with trio.move_on_after(2):
                    await stream.aclose()

    held = 0
    with trio.move_on_after(TIME_LIMIT):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
            with trio.move_on_after(TIME_LIMIT - 5):
                await all_open.wait()
            await trio.sleep(0.5)
            held = rss_kb(setup.relay.pid)
            release.set()
    if not release.is_set():
        failures = max(failures, 1)
    return failures, held, rss_before


def concurrency(setup: Setup, max_concurrent: int) -> dict[str, tuple[int, list[str]]]:
    """The largest step held with no failure on each path, the steps' outcomes, and the
    relay's RSS per open connection at its largest clean step."""
    out: dict[str, tuple[int, list[str]]] = {}
    setup.rss_per_conn = 0.0  # type: ignore[attr-defined]
    for path in ("relay", "nginx"):
        best, notes = 0, []
        for step in (s for s in STEPS if s <= max_concurrent):
            failures, held, before = trio.run(hold, setup, path, step)
            notes.append(f"{step}: {failures} failed")
            if failures:
                break
            best = step
            if path == "relay":
                setup.rss_per_conn = (held - before) / step  # type: ignore[attr-defined]
            time.sleep(1)  # let closed connections drain
        out[path] = (best, notes)
    return out


class AcmeSetup:
    """pebble, a relay with the challtestsrv DNS backend, and fresh nodes with no
    certificate: each gets one from pebble through the relay."""

    def __init__(self, workdir: Path) -> None:
        from tests.pebble.ca import Pebble

        self.workdir = workdir
        self.pebble = Pebble(workdir / "pebble", validity_s=ACME_VALIDITY).start()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.base = {**os.environ, "GATE_LOG": "warning"}
        self.relay_port = free_port()
        env = {
            **relay_env(
                {**self.base, "XDG_DATA_HOME": str(workdir / "relay-data")},
                self.relay_port,
                workdir / "relay",
            ),
            "GATE_RELAYD_DNS__BACKEND": "challtestsrv",
            "GATE_RELAYD_DNS__URL": self.pebble.challtestsrv_url,
            # A fresh node each run: more challenges a minute than the default allows.
            "GATE_RELAYD_DNS__CHALLENGES_PER_MINUTE": "1000",
        }
        relay, self.relay_address = start_relay(env, workdir / "acme-relay.out")
        self.procs.append(relay)
        self.trusted = ssl.create_default_context(cadata=self.pebble.root_pem())
        self.anything = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.anything.check_hostname, self.anything.verify_mode = False, ssl.CERT_NONE

    def start_node(self, name: str) -> tuple[subprocess.Popen[bytes], str, str, Path]:
        """A node with a new identity; returns it, its name, an API key and its data dir."""
        home = self.workdir / name
        env = {
            **self.base,
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
            **LOOPBACK_NODE,
        }
        node_id = json.loads(gate("identity", "show", "--json", env=env))["node_id"]
        key = json.loads(
            gate(
                "keys", "create", "bench", "--json", env={**env, "GATE_SERVER__BIND": "127.0.0.1:9"}
            )
        )["key"]
        config = home / "gate.toml"
        config.write_text(
            f'[server]\nbind = "127.0.0.1:{free_port()}"\n'
            f"[relay]\nenabled = true\nservers = [{json.dumps(self.relay_address)}]\n"
            f"[tls]\nacme_directory = {json.dumps(self.pebble.directory_url)}\n"
            f"acme_ca_bundle = {json.dumps(str(self.pebble.ca_bundle))}\n"
        )
        node = spawn_gate("serve", "--config", str(config), env=env)
        self.procs.append(node)
        return node, f"{node_id}.{DOMAIN}", key, home / "data" / "gate"

    def connect(self, hostname: str, verify: bool = True) -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", self.relay_port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.trusted if verify else self.anything
        return context.wrap_socket(sock, server_hostname=hostname)

    def trusted_answer(self, hostname: str, key: str, verify: bool = True) -> bool:
        """One GET /health through the relay, accepted by a client trusting pebble (or,
        `verify=False`, by one that takes any certificate)."""
        try:
            with self.connect(hostname, verify) as tls:
                tls.sendall(
                    f"GET /health HTTP/1.1\r\nHost: {hostname}\r\nAuthorization: Bearer {key}"
                    "\r\nConnection: close\r\n\r\n".encode()
                )
                return tls.recv(64).startswith(b"HTTP/1.1 200")
        except (OSError, ssl.SSLError):
            return False

    def close(self) -> None:
        stop_all(self.procs)
        self.pebble.close()


def first_trusted_answers(acme: AcmeSetup) -> list[tuple[float, float]]:
    """For each fresh node: seconds from its start to its first answer through the relay
    (any certificate: the self-signed one while ACME works), and to its first trusted
    answer. Polled every 20 ms (each failed try is a refused handshake or an unrouted
    name), so the figures are good to ~20 ms."""
    out = []
    for run in range(ACME_RUNS):
        started = time.monotonic()
        node, hostname, key, _ = acme.start_node(f"fresh-{run}")
        deadline = started + 120
        routed = 0.0
        while not acme.trusted_answer(hostname, key):
            if time.monotonic() > deadline or node.poll() is not None:
                raise RuntimeError("no trusted answer from a fresh node within 120 s")
            if not routed and acme.trusted_answer(hostname, key, verify=False):
                routed = time.monotonic() - started
            time.sleep(0.02)
        trusted = time.monotonic() - started
        out.append((routed or trusted, trusted))
        node.terminate()
        node.wait(timeout=15)
    return out


def reload_cost(acme: AcmeSetup) -> dict[str, object]:
    """One certificate install timed in process (RELOADS times, the node's own code on
    a pebble certificate), and a running node's renewals seen from an open connection:
    requests on it every 50 ms for KEPT_WINDOW seconds, with how many failed, their
    latency, whether its certificate stayed the same and how many renewals new
    connections saw meanwhile."""
    from gate.config import TlsConfig
    from gate.services.acme.store import load_issued
    from gate.services.http.tls import NodeCertificate

    node, hostname, key, data_dir = acme.start_node("renewing")
    deadline = time.monotonic() + 120
    while not acme.trusted_answer(hostname, key):
        if time.monotonic() > deadline:
            raise RuntimeError("no certificate")
        time.sleep(0.02)
    issued = load_issued(data_dir, hostname)
    assert issued is not None
    certificate = NodeCertificate(TlsConfig(), acme.workdir / "reload")
    certificate.cover([hostname])
    timings = []
    for _ in range(RELOADS):
        t0 = time.perf_counter()
        certificate.install(hostname, issued.path)
        timings.append(time.perf_counter() - t0)

    setup = acme

    class Kept(http.client.HTTPSConnection):
        """One connection: a reconnect would be a failure, counted."""

        reconnects = -1

        def connect(self) -> None:
            self.sock = setup.connect(hostname)
            self.reconnects += 1

    conn = Kept(hostname, timeout=10, context=acme.trusted)
    conn.connect()
    assert conn.sock is not None
    kept = conn.sock.getpeercert(binary_form=True)
    latencies, failures, served = [], 0, set()
    end = time.monotonic() + KEPT_WINDOW
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/health", headers={"Authorization": f"Bearer {key}"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures += 1
        except (OSError, ssl.SSLError, http.client.HTTPException):
            failures += 1
            conn.close()
            continue
        latencies.append(time.perf_counter() - t0)
        with contextlib.suppress(OSError, ssl.SSLError), acme.connect(hostname) as fresh:
            served.add(fresh.getpeercert(binary_form=True))
        time.sleep(0.05)
    same = conn.sock is not None and conn.sock.getpeercert(binary_form=True) == kept
    failures += conn.reconnects
    conn.close()
    node.terminate()
    node.wait(timeout=15)
    return {
        "install": timings,
        "latencies": latencies,
        "failures": failures,
        "same": same,
        "certificates": len(served),
    }


def acme_main() -> None:
    with tempfile.TemporaryDirectory(prefix="gate-bench-acme-") as tmp:
        acme = AcmeSetup(Path(tmp))
        try:
            firsts = first_trusted_answers(acme)
            cost = reload_cost(acme)
        finally:
            acme.close()
    print("ACME (pebble through the relay's challtestsrv DNS, loopback)")
    runs = ", ".join(f"{t:.2f}" for _, t in firsts)
    routed = ", ".join(f"{r:.2f}" for r, _ in firsts)
    print(f"fresh node start -> first trusted HTTPS answer: {runs} s ({ACME_RUNS} runs)")
    print(f"  (its first answer with the self-signed certificate: {routed} s)")
    install = cost["install"]
    latencies = cost["latencies"]
    assert isinstance(install, list) and isinstance(latencies, list)
    print(
        f"certificate reload (install, in process): p50 {pct(install, 0.5):.2f} ms,"
        f" p99 {pct(install, 0.99):.2f} ms over {RELOADS}"
    )
    print(
        f"one open connection across renewals: {len(latencies)} requests,"
        f" {cost['failures']} failed, p50 {pct(latencies, 0.5):.2f} ms,"
        f" max {max(latencies) * 1000:.2f} ms; its certificate unchanged: {cost['same']};"
        f" new connections saw {cost['certificates']} certificates in {KEPT_WINDOW:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-concurrent", type=int, default=1000)
    parser.add_argument("--acme-only", action="store_true", help="only the ACME figures")
    args = parser.parse_args()
    if args.acme_only:
        acme_main()
        return
    with tempfile.TemporaryDirectory(prefix="gate-bench-relay-") as tmp:
        setup = Setup(Path(tmp))
        try:
            setup.start()
            relay_idle_rss = rss_kb(setup.relay.pid)
            shakes = handshakes(setup)
            latency = requests(setup)
            rates = throughput(setup)
            held = concurrency(setup, args.max_concurrent)
        finally:
            setup.close()

    print(
        f"Relay benchmark: {HANDSHAKES} handshakes and {REQUESTS} kept-alive GET /health per"
        f" path, taking turns in blocks of {BLOCK}; a {BIG_EVENTS * len(BIG_CONTENT) / 1e6:.0f}"
        " MB streamed answer per throughput round\n"
    )
    print(
        f"{'':26}{'handshake p50':>14}{'p99':>8}{'request p50':>13}{'p99':>8}"
        f"{'MB/s best':>11}{'median':>8}{'CPU ms/MB':>11}{'node ms/MB':>12}{'concurrent':>12}"
    )
    for path, label in (("relay", "gate relay serve"), ("nginx", "nginx ssl_preread")):
        best, median, cpu, node_cpu = rates[path]
        print(
            f"{label:26}{pct(shakes[path], 0.5):14.2f}{pct(shakes[path], 0.99):8.2f}"
            f"{pct(latency[path], 0.5):13.2f}{pct(latency[path], 0.99):8.2f}"
            f"{best:11.0f}{median:8.0f}{cpu * 1000:11.2f}{node_cpu * 1000:12.2f}{held[path][0]:12}"
        )
    print()
    ratio = pct(shakes["relay"], 0.5) / pct(shakes["nginx"], 0.5)
    rss = setup.rss_per_conn  # type: ignore[attr-defined]
    print(f"handshake p50 relay / nginx: {ratio:.2f}x (target <= 2x)")
    print(
        f"one connection through the relay: {rates['relay'][0]:.0f} MB/s best,"
        f" {rates['relay'][1]:.0f} median (target >= 100); through nginx"
        f" {rates['nginx'][0]:.0f} best, {rates['nginx'][1]:.0f} median"
    )
    print(
        f"CPU per MB: relay / nginx {rates['relay'][2] / max(rates['nginx'][2], 1e-9):.1f}x;"
        f" the node behind the relay / behind nginx {rates['relay'][3] / rates['nginx'][3]:.2f}x"
    )
    print(f"concurrent steps: relay {held['relay'][1]}; nginx {held['nginx'][1]}")
    print("  (target: 1,000 through the relay with 0 failures)")
    print(
        f"relay RSS: {relay_idle_rss / 1024:.1f} MB idle, {rss:.1f} KB per open connection "
        "(target <= 100)"
    )
    print()
    acme_main()


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    main()
