"""The relay against the world: headless Chromium through it, bytes checked end to end,
restarts and failures of either side, certificates replaced under load, and the door in
the usage log. `gate relay serve` and `gate serve` run as separate processes on loopback
(iroh relays and discovery off), on ports chosen here so that a restarted process comes
back where the other side expects it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import ssl
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gate.identity import NodeIdentity
from gate.protocol import (
    ErrorCode,
    FrameDecoder,
    NodeId,
    StreamError,
    StreamType,
    TlsProxyHeader,
    encode_frame,
    encode_preamble,
)
from gate.services.p2p.http_over_stream import request_over_stream
from gate.services.transport.framed import receive_event
from gate.services.transport.quic import bind_endpoint
from tests.local_ca import LocalCA

from .conftest import engine_config
from .gate_process import (
    GateServe,
    free_port,
    p2p_address,
    relay_env,
    relay_serve,
    run_gate,
    wait_for,
)
from .test_gateway import HI, MODEL, NO_EOS
from .test_relay import DOMAIN, NOWHERE, RelayedHTTPS, _get

pytestmark = pytest.mark.e2e


class World:
    """A relay and a node, each restartable in place (same ports, same data)."""

    def __init__(self, tmp_path: Path, gate_env: dict[str, str], engine_url: str | None) -> None:
        self.tmp = tmp_path
        self.tcp_port = free_port(socket.SOCK_STREAM)
        self.relay_env = {
            **relay_env(
                gate_env,
                DOMAIN,
                tmp_path / "relay-data",
                listen=f"127.0.0.1:{self.tcp_port}",
                p2p_port=free_port(socket.SOCK_DGRAM),
            ),
            "GATE_RELAYD_IDLE_TIMEOUT": "30",
            "GATE_RELAYD_CONNECT_TIMEOUT": "3",
            "GATE_RELAYD_LOG_LEVEL": "debug",  # "connection routed" is a debug line
        }
        self.relay: GateServe | None = None
        self.relay_logs = ""  # stderr of relays that have stopped
        self.start_relay()
        self.node_env = {**gate_env, "GATE_P2P__PORT": str(free_port(socket.SOCK_DGRAM))}
        self.node_id = json.loads(run_gate("identity", "show", "--json", env=self.node_env).stdout)[
            "node_id"
        ]
        self.hostname = f"{self.node_id}.{DOMAIN}"
        created = run_gate(
            "keys", "create", "relay", "--json", env={**self.node_env, "GATE_SERVER__BIND": NOWHERE}
        )
        assert created.returncode == 0, created.stderr
        self.key = json.loads(created.stdout)["key"]
        self.ca = LocalCA()
        self.cert_file, self.key_file = self.ca.issue(self.hostname, tmp_path / "tls")
        self.context = ssl.create_default_context(cadata=self.ca.pem())
        self.engine_url = engine_url
        self.node: GateServe | None = None
        self.trusted: list[str] = []
        self.peer: NodeIdentity | None = None

    @property
    def relay_port(self) -> tuple[str, int]:
        return ("127.0.0.1", self.tcp_port)

    def start_relay(self) -> None:
        self.relay = relay_serve(self.relay_env).start()
        self.relay_address = p2p_address(self.relay)

    def stop_relay(self) -> None:
        assert self.relay is not None
        self.relay.stop()
        self.relay_logs += self.relay.stderr()
        self.relay.close()
        self.relay = None

    def relay_log(self) -> str:
        return self.relay_logs + (self.relay.stderr() if self.relay else "")

    def start_node(self) -> None:
        config = engine_config(self.engine_url) if self.engine_url else "[security]\n"
        config += (
            f"[relay]\nenabled = true\nservers = [{json.dumps(self.relay_address)}]\n"
            f"[tls]\ncert_file = {json.dumps(str(self.cert_file))}\n"
            f"key_file = {json.dumps(str(self.key_file))}\n"
        )
        if self.trusted:
            config += f"[p2p]\ntrusted_peers = {json.dumps(self.trusted)}\n"
        self.node = GateServe(self.node_env, config=config).start()

    def get(self, path: str, key: str | None = None):
        return _get(self.node_id, self.relay_port, self.context, path, key or self.key)

    def wait_routed(self, timeout: float = 20.0) -> None:
        wait_for(lambda: self.get("/health") is not None, "the node's name routed", timeout=timeout)

    def close(self) -> None:
        for proc in (self.node, self.relay):
            if proc is not None:
                proc.close()


@pytest.fixture
def world(tmp_path, gate_env):
    w = World(tmp_path, gate_env, None)
    try:
        w.start_node()
        w.wait_routed()
        yield w
    finally:
        w.close()


@pytest.fixture
def llama_world(tmp_path, gate_env, llama_engine):
    """A world whose node serves llama.cpp and trusts one more node, `w.peer`."""
    w = World(tmp_path, gate_env, llama_engine)
    w.peer = NodeIdentity.generate()
    w.trusted = [str(NodeId(w.peer.public_key_bytes))]
    try:
        w.start_node()
        w.wait_routed()
        yield w
    finally:
        w.close()


async def peer_request(
    w: World, peer: NodeIdentity, method: str, target: str, body: bytes = b""
) -> tuple[int, bytes]:
    """One request over an http_proxy stream from `peer` (trusted by w's node), with
    gate's own transport and requester: what a second node sends."""
    endpoint = await bind_endpoint(peer.secret_key_bytes, host="127.0.0.1")
    try:
        with trio.fail_after(60):
            conn = await endpoint.connect(
                NodeId.parse(w.node_id), [f"127.0.0.1:{w.node_env['GATE_P2P__PORT']}"]
            )
            response = await request_over_stream(
                await conn.open_stream(),
                method=method,
                target=target,
                headers=[(b"content-type", b"application/json")] if body else [],
                body=body,
                peer="node",
                response_timeout=30,
                read_timeout=30,
            )
            data = b"".join([chunk async for chunk in response.aiter_body()])
            await response.aclose()
            conn.close()
            return response.status, data
    finally:
        with trio.CancelScope(shield=True):
            await endpoint.aclose()


def routed_lines(world: World) -> list[str]:
    return [
        line
        for line in world.relay_log().splitlines()
        if "connection routed" in line and world.hostname in line
    ]


# --- 1. headless Chromium -----------------------------------------------------------------


def test_chromium_loads_a_page_through_the_relay(world):
    """The system Chromium, as tests/e2e/test_ui.py launches it, pointed at the relay's
    port for the node's name: its real ~2 KB ClientHello (an X25519MLKEM768 key share)
    is read by the relay, routed, and TLS is ended by the node.

    The node's certificate is trusted with --ignore-certificate-errors-spki-list (its
    key's SPKI hash): Chromium then accepts that exact key, and nothing else, with no
    NSS database to make (certutil is not on every machine) and no system CA touched.
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    from .test_ui import CHROMIUM, LAUNCH_ARGS

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/system-deps.sh installs chromium)")
    cert = x509.load_pem_x509_certificate(world.cert_file.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    args = [a for a in LAUNCH_ARGS if not a.startswith("--host-resolver-rules")] + [
        f"--host-resolver-rules=MAP {world.hostname} 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={pin}",
    ]
    before = len(routed_lines(world))
    origin = f"https://{world.hostname}:{world.tcp_port}"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page()
            response = page.goto(f"{origin}/health", timeout=20_000)
            assert response is not None and response.status == 200
            assert json.loads(page.inner_text("body"))["status"] == "ok"
            fetch = """async ([key]) => {
                const headers = key ? {Authorization: 'Bearer ' + key} : {};
                const r = await fetch('/v1/models', {headers});
                return [r.status, await r.json()];
            }"""
            status, body = page.evaluate(fetch, [world.key])
            assert status == 200 and body["object"] == "list", body
            status, body = page.evaluate(fetch, [None])
            assert status == 401 and "API key" in body["error"]["message"]
        finally:
            browser.close()
    lines = wait_for(lambda: routed_lines(world)[before:], "the relay's routed line")
    sizes = [int(m.group(1)) for line in lines if (m := re.search(r"hello_bytes=(\d+)", line))]
    assert sizes and max(sizes) > 1500, lines  # Chromium's hello, not a short one
    print(f"Chromium's ClientHello through the relay: {max(sizes)} bytes")


# --- 2. byte for byte -------------------------------------------------------------------


class RawTls:
    """TLS driven by hand over a plain socket to the relay: every byte that crosses the
    relay passes through here, so a test may change one on its way, in either
    direction."""

    def __init__(self, world: World) -> None:
        self.sock = socket.create_connection(world.relay_port, timeout=20)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = world.context.wrap_bio(
            self.incoming, self.outgoing, server_hostname=world.hostname
        )
        self.sent = 0

    def flush(self) -> bytes:
        data = self.outgoing.read()
        self.sock.sendall(data)
        self.sent += len(data)
        return data

    def pump(self) -> bytes:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return data

    def handshake(self) -> None:
        for _ in range(50):
            try:
                self.tls.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                if not self.pump():
                    raise ConnectionError("closed during the handshake") from None
        raise AssertionError("no handshake in 50 rounds")

    def request(self, head: bytes) -> bytes:
        """Send one request, return its whole response (Content-Length framed)."""
        self.tls.write(head)
        self.flush()
        data = b""
        for _ in range(1000):
            try:
                data += self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not self.pump():
                    break
                continue
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = re.search(rb"(?i)content-length: *(\d+)", data[:head_end])
                if length and len(data) >= head_end + 4 + int(length.group(1)):
                    return data
        raise ConnectionError(f"no complete response: {data[:200]!r}")

    def close(self) -> None:
        self.sock.close()


def test_bytes_cross_the_relay_exactly_both_ways(world):
    """What the client sends is what the node reads, and the other way, proven by TLS:
    the handshake succeeds only if the node's transcript of every handshake byte
    (Chromium-sized or not, starting with the ClientHello the relay parsed) equals the
    client's, since each side's Finished is a MAC over it; after it, every record is
    AEAD-sealed, so one byte changed anywhere fails its tag. Both halves of that claim
    are checked through the relay here: a clean exchange of known bytes (a 256 KiB
    request body, answered) succeeds, and one flipped ciphertext byte, client to node or
    node to client, makes the receiving side fail instead of reading other bytes."""
    request = (
        f"GET /health HTTP/1.1\r\nHost: {world.hostname}\r\n"
        f"Authorization: Bearer {world.key}\r\n\r\n"
    ).encode()

    # Known bytes both ways, many records: a 256 KiB request body the node must read
    # whole to answer (a model no engine serves: 404 after parsing it), then a second
    # request on the same connection.
    clean = RawTls(world)
    try:
        clean.handshake()
        filler = base64.b64encode(os.urandom(192 * 1024)).decode()
        body = json.dumps(
            {"model": "no-such-model", "messages": [{"role": "user", "content": filler}]}
        ).encode()
        answer = clean.request(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {world.hostname}\r\n"
            f"Authorization: Bearer {world.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
        assert b"no-such-model" in answer  # the node parsed the body it received
        answer = clean.request(request)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        assert answer.endswith(b'{"status":"ok"}')
        assert clean.sent > len(body)
    finally:
        clean.close()

    # Client to node: one byte of a sealed request record flipped on its way.
    tampered = RawTls(world)
    try:
        tampered.handshake()
        tampered.tls.write(request)
        record = bytearray(tampered.outgoing.read())
        record[len(record) // 2] ^= 0x01
        tampered.sock.sendall(record)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tampered.request(b"")  # the node's alert, or its close: never a response
    finally:
        tampered.close()

    # Node to client: one byte of the node's sealed answer flipped on its way in.
    tampered = RawTls(world)
    try:
        tampered.handshake()
        tampered.tls.write(request)
        tampered.flush()
        data = b""
        deadline = time.monotonic() + 10
        while len(data) < 200 and time.monotonic() < deadline:  # the answer's records
            data += tampered.sock.recv(65536)
        changed = bytearray(data)
        changed[-10] ^= 0x01  # inside the last record's ciphertext or tag
        tampered.incoming.write(bytes(changed))
        with pytest.raises(ssl.SSLError, match=re.compile("bad.record.mac|decrypt", re.I)):
            for _ in range(20):
                tampered.tls.read(65536)
    finally:
        tampered.close()


# --- 3. restarts and failures -----------------------------------------------------------


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_restarted_relay_routes_the_node_again_without_a_node_restart(world, how):
    """Stopped, the relay closes its connections and the node reconnects at once;
    killed, the node finds out by its QUIC probes (4 s of silence) and then reconnects:
    measured ~4.7 s, bounded at 12 s for a busy 2-core machine (it was ~25 s when only
    the 15 s domain_request keepalive noticed). Either way the names survive in the
    relay's registry file."""
    assert world.get("/health")[0] == 200
    node_pid = world.node.proc.pid
    if how == "killed":
        world.relay.proc.kill()
        world.relay.proc.wait(10)
    world.stop_relay()
    assert world.get("/health") is None  # nobody on the port
    world.start_relay()  # same identity, ports and registry file
    started = time.monotonic()
    world.wait_routed(timeout=60)
    elapsed = time.monotonic() - started
    assert world.node.proc.pid == node_pid and world.node.proc.poll() is None
    assert world.get("/v1/models")[0] == 200
    print(f"relay {how}: routed again {elapsed:.1f}s after it restarted")
    assert elapsed < 12.0


def test_a_restarted_node_is_reachable_again(world):
    world.node.close()
    world.node = None
    world.start_node()
    world.wait_routed(timeout=60)
    assert world.get("/v1/models")[0] == 200


def test_a_killed_node_gets_its_clients_a_clean_close_counted_by_the_relay(world):
    world.node.proc.kill()  # no goodbye: the relay still holds its connection
    world.node.proc.wait(10)
    started = time.monotonic()
    with (
        socket.create_connection(world.relay_port, timeout=20) as sock,
        pytest.raises(ssl.SSLError, match=re.compile("unrecognized.name", re.I)),
    ):
        world.context.wrap_socket(sock, server_hostname=world.hostname)
    # Within the relay's connect_timeout (3 s here) and a little, not its idle timeout.
    assert time.monotonic() - started < 10
    wait_for(
        lambda: re.search(r"outcome=node_unreachable\b.*" + world.hostname, world.relay_log()),
        "the relay counting the connection as node_unreachable",
    )


def test_a_trusted_peer_that_is_not_a_relay_cannot_open_tls_proxy(tmp_path, gate_env):
    """A second node, trusted by the first (`p2p.trusted_peers`), reaches its API over
    an http_proxy stream, but a tls_proxy stream it opens is refused: only a relay this
    node registered with may open one."""
    w = World(tmp_path, gate_env, None)
    w.peer = peer = NodeIdentity.generate()
    w.trusted = [str(NodeId(peer.public_key_bytes))]
    try:
        w.start_node()
        w.wait_routed()
        # Trusted: its http_proxy request is served.
        assert trio.run(peer_request, w, peer, "GET", "/health")[0] == 200

        async def open_tls_proxy() -> object:
            endpoint = await bind_endpoint(peer.secret_key_bytes, host="127.0.0.1")
            try:
                with trio.fail_after(30):
                    conn = await endpoint.connect(
                        NodeId.parse(w.node_id), [f"127.0.0.1:{w.node_env['GATE_P2P__PORT']}"]
                    )
                    stream = await conn.open_stream()
                    header = TlsProxyHeader(sni=w.hostname, client_addr="192.0.2.1:5")
                    await stream.send_all(
                        encode_preamble(StreamType.TLS_PROXY)
                        + encode_frame(msgspec.msgpack.encode(header))
                    )
                    # A bare error frame (spec §3.5), then the end of the stream.
                    frame = await receive_event(stream, FrameDecoder())
                    conn.close()
                    return frame
            finally:
                with trio.CancelScope(shield=True):
                    await endpoint.aclose()

        frame = trio.run(open_tls_proxy)
        assert isinstance(frame, bytes), frame
        error = msgspec.msgpack.decode(frame, type=StreamError)
        assert error.code == ErrorCode.UNAUTHORIZED, error
        # The node is none the worse: the relay still reaches it.
        assert w.get("/health")[0] == 200
    finally:
        w.close()


# --- 4. certificate hot reload ----------------------------------------------------------


def test_a_replaced_certificate_is_served_without_a_restart_or_a_dropped_connection(world):
    """New files, moved into place as a renewal does: the next handshake gets the new
    certificate, while a kept-alive connection made before goes on working."""
    kept = RelayedHTTPS(world.hostname, world.relay_port, world.context)
    kept.request("GET", "/health", headers={"Authorization": f"Bearer {world.key}"})
    response = kept.getresponse()
    assert response.status == 200
    response.read()
    old = kept.sock.getpeercert(binary_form=True)

    new_cert, new_key = world.ca.issue(world.hostname, world.tmp / "renewed")
    os.replace(new_key, world.key_file)
    os.replace(new_cert, world.cert_file)
    expected = x509.load_pem_x509_certificate(world.cert_file.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert expected != old

    fresh = RelayedHTTPS(world.hostname, world.relay_port, world.context)
    fresh.connect()
    assert fresh.sock.getpeercert(binary_form=True) == expected
    fresh.close()

    kept.request("GET", "/v1/models", headers={"Authorization": f"Bearer {world.key}"})
    response = kept.getresponse()
    assert response.status == 200
    response.read()
    assert kept.sock.getpeercert(binary_form=True) == old
    kept.close()


# --- 5. the door in the usage log -------------------------------------------------------


def test_the_usage_log_records_the_door_each_request_came_through(llama_world):
    w = llama_world
    request = {"model": MODEL, "messages": HI, "max_tokens": 4, "logit_bias": NO_EOS}
    conn = RelayedHTTPS(w.hostname, w.relay_port, w.context)
    response = conn.post_json("/v1/chat/completions", request, w.key)
    assert response.status == 200, response.read()
    response.read()
    conn.close()
    local = httpx.post(f"{w.node.url}/v1/chat/completions", json=request, timeout=60)
    assert local.status_code == 200, local.text
    assert w.peer is not None
    status, body = trio.run(
        peer_request, w, w.peer, "POST", "/v1/chat/completions", json.dumps(request).encode()
    )
    assert status == 200, body

    def history(**params):
        answer = httpx.post(
            f"{w.node.url}/rpc",
            json={"jsonrpc": "2.0", "id": 1, "method": "request_history", "params": params},
            timeout=30,
        ).json()
        return answer["result"]

    def doors():
        rows = history(limit=10)
        return sorted(r["door"] for r in rows) if len(rows) >= 3 else None

    assert wait_for(doors, "three usage rows") == ["local", "peer", "relay"]
    (relayed,) = history(door="relay")
    assert relayed["client"] != "127.0.0.1" and relayed["status"] == 200  # the key's id
