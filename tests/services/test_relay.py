"""The relay's parts without processes: its config, who may take which name, the
SNI-to-node rule, the splice, and the node's relay door (its routes and its key rule).
The whole path, with real processes, is tests/e2e/test_relay.py."""

from __future__ import annotations

import contextlib
import functools
import json
import ssl

import msgspec
import pytest
import trio
import trio.testing

from gate.config import TlsConfig, load_config
from gate.errors import ConfigError
from gate.identity import NodeIdentity
from gate.protocol import (
    NEED_DATA,
    ActivateDomain,
    ActivationResponse,
    DnsChallenge,
    DomainRequest,
    DomainResponse,
    ErrorCode,
    FrameDecoder,
    NodeId,
    PreambleReader,
    RelayError,
    StreamError,
    StreamType,
    TlsProxyHeader,
    encode_frame,
)
from gate.relay_config import RelayServerConfig, load_relay_config
from gate.services.http.router import Door, send_json, with_door
from gate.services.http.server import build_app
from gate.services.http.tls import NodeCertificate
from gate.services.p2p.dispatch import IncomingStream, Opener, StreamDispatch
from gate.services.p2p.tls_proxy import TlsDoor
from gate.services.relay.control import RelayControlServer
from gate.services.relay.front import UNRECOGNIZED_NAME_ALERT, TlsFront, node_of_name
from gate.services.relay.registry import NameRegistry
from gate.services.relay.splice import splice

from .test_doors import gateway  # noqa: F401  (the fixture)

DOMAIN = "relay.test"


def new_node() -> NodeId:
    return NodeId(NodeIdentity.generate().public_key_bytes)


# --- relay.toml ------------------------------------------------------------------------


def test_relay_config_layers_and_strictness(tmp_path):
    file = tmp_path / "relay.toml"
    file.write_text('domain = "Relay.Example.COM."\nlisten = "127.0.0.1:8443"\n')
    config = load_relay_config(file, env={"GATE_RELAYD_P2P_PORT": "0"})
    assert (config.domain, config.listen, config.p2p_port) == (
        "relay.example.com",
        "127.0.0.1:8443",
        0,
    )
    assert config.idle_timeout == 300.0  # a default
    # The environment wins over the file.
    assert (
        load_relay_config(file, env={"GATE_RELAYD_LISTEN": "0.0.0.0:443"}).listen == "0.0.0.0:443"
    )
    with pytest.raises(ConfigError, match="GATE_RELAYD_BOGUS: unknown key 'bogus'"):
        load_relay_config(file, env={"GATE_RELAYD_BOGUS": "1"})
    file.write_text('domain = "relay.test"\np2p_port = "1"\n')  # strict: no coercion in a file
    with pytest.raises(ConfigError, match=r"relay.toml: p2p_port: Expected `?int"):
        load_relay_config(file, env={})
    file.write_text("")
    with pytest.raises(ConfigError, match=r"relay\.toml: domain: required"):
        load_relay_config(file, env={})
    with pytest.raises(ConfigError, match=r"absent\.toml: no such file"):  # named: must exist
        load_relay_config(tmp_path / "absent.toml", env={"GATE_RELAYD_DOMAIN": DOMAIN})
    with pytest.raises(ConfigError, match="domain: expected a DNS name"):
        load_relay_config(None, env={"GATE_RELAYD_DOMAIN": "localhost"})


def test_the_node_config_ignores_the_relays_variables(tmp_path):
    config, _ = load_config(
        tmp_path / "gate.toml", env={"GATE_RELAYD_DOMAIN": "x.test"}, missing_ok=True
    )
    assert config.relay.enabled is False


def test_tls_files_go_together(tmp_path):
    with pytest.raises(ConfigError, match=r"cert_file and key_file go together"):
        load_config(tmp_path / "gate.toml", env={"GATE_TLS__CERT_FILE": "/x.pem"}, missing_ok=True)


# --- names -----------------------------------------------------------------------------


def test_the_first_label_must_be_the_whole_node_id_under_the_domain():
    node = new_node()
    assert node_of_name(f"{node}.{DOMAIN}", DOMAIN) == node
    assert node_of_name(f"{str(node).upper()}.RELAY.TEST.", DOMAIN) == node
    assert node_of_name(f"{node}.other.test", DOMAIN) is None
    assert node_of_name(f"{str(node)[:-1]}.{DOMAIN}", DOMAIN) is None  # a prefix is not enough
    assert node_of_name(f"{node.hex}.{DOMAIN}", DOMAIN) is None  # one spelling only
    assert node_of_name(f"www.{node}.{DOMAIN}", DOMAIN) is None
    assert node_of_name(DOMAIN, DOMAIN) is None


async def test_a_node_acts_only_on_its_own_name_and_the_registry_persists(tmp_path):
    path = tmp_path / "relay.db"
    registry = NameRegistry.open(path)
    server = RelayControlServer(DOMAIN, registry)
    node, other = new_node(), new_node()
    own = f"{node}.{DOMAIN}"

    assert await server.answer(node, DomainRequest(node_id=str(node))) == DomainResponse(domain=own)
    assert registry.lookup(node).activated is False
    refusals = [
        await server.answer(other, DomainRequest(node_id=str(node))),
        await server.answer(other, ActivateDomain(domain=own)),
        await server.answer(node, ActivateDomain(domain=f"{other}.{DOMAIN}")),
        await server.answer(
            node, DnsChallenge(domain=f"_acme-challenge.{other}.{DOMAIN}", txt_value="x")
        ),
    ]
    assert all(isinstance(r, RelayError) and r.code == ErrorCode.UNAUTHORIZED for r in refusals)
    assert registry.lookup(other) is None and registry.lookup(node).activated is False
    # Case-insensitive, a trailing dot allowed.
    answer = await server.answer(node, ActivateDomain(domain=f"{str(node).upper()}.RELAY.TEST."))
    assert answer == ActivationResponse(ok=True)
    registry.close()

    again = NameRegistry.open(path)  # a restart keeps the names
    assert again.lookup(node).activated is True and again.lookup(node).domain == own
    assert again.lookup(other) is None
    again.close()


def test_tls_proxy_streams_are_admitted_from_registered_relays_only():
    relay, peer, stranger = new_node(), new_node(), new_node()
    dispatch = StreamDispatch({}, trusted=lambda n: n == peer, relay=lambda n: n == relay)
    assert dispatch.admits(Opener.REGISTERED_RELAY, relay)
    assert not dispatch.admits(Opener.REGISTERED_RELAY, peer)  # trusted, but not a relay
    assert not dispatch.admits(Opener.REGISTERED_RELAY, stranger)
    assert not dispatch.admits(Opener.TRUSTED_PEER, relay)


# --- the splice ------------------------------------------------------------------------


async def test_splice_copies_both_ways_and_mirrors_half_close():
    client, client_far = trio.testing.lockstep_stream_pair()
    node, node_far = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        results = []

        async def run() -> None:
            results.append(await splice(client_far, node_far, idle_timeout=10))

        nursery.start_soon(run)
        with trio.fail_after(5):
            await client.send_all(b"hello")
            assert await node.receive_some(100) == b"hello"
            await client.send_eof()  # the browser is done sending...
            assert await node.receive_some(100) == b""  # ...and the node hears it
            await node.send_all(b"answer")  # while the other way still flows
            assert await client.receive_some(100) == b"answer"
            await node.send_eof()
            assert await client.receive_some(100) == b""
    assert (results[0].a_to_b, results[0].b_to_a, results[0].outcome) == (5, 6, "closed")


async def test_splice_ends_after_idle_time_but_not_while_bytes_flow(autojump_clock):
    client, client_far = trio.testing.lockstep_stream_pair()
    node, node_far = trio.testing.lockstep_stream_pair()
    results = []
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            results.append(await splice(client_far, node_far, idle_timeout=10))

        nursery.start_soon(run)
        for _ in range(30):  # 30 bytes over 150 s: far longer than the idle timeout
            await trio.sleep(5)
            await node.send_all(b"x")
            assert await client.receive_some(10) == b"x"
        assert not results
        await trio.sleep(11)  # silence
    assert results[0].outcome == "idle"


class _AskedSizes(trio.abc.HalfCloseableStream):
    """A stream that notes the size of every read asked of it."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.asked: list[int | None] = []

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self.asked.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_splice_reads_grow_while_a_large_answer_flows_and_stay_small_when_quiet():
    # A read from iroh costs per call as well as per byte, so a large answer should
    # cross in large reads; but iroh sets aside the whole size asked for a read in
    # progress, and a relay holds one pending read per open connection: a quiet
    # connection's must stay small (64 KiB each made ~53 KB of RSS per connection).
    client, client_far = trio.testing.memory_stream_pair()
    node, node_far = trio.testing.memory_stream_pair()
    node_side = _AskedSizes(node_far)
    answer = bytes(3 * 1024 * 1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(splice, client_far, node_side, idle_timeout=10))
        with trio.fail_after(5):
            await node.send_all(answer)
            got = 0
            while got < len(answer):
                got += len(await client.receive_some(1024 * 1024))
            await trio.testing.wait_all_tasks_blocked()
            assert max(node_side.asked) == 256 * 1024  # grown while the answer came
            assert node_side.asked[-1] == 16 * 1024  # the pending read of a quiet stream
            await node.send_eof()
            await client.send_eof()
            assert await client.receive_some(10) == b""


# --- the relay door ----------------------------------------------------------------------


async def call(app, path, headers=()):
    sent = []

    async def receive():
        if not sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": list(headers),
        "query_string": b"",
        "client": ("198.51.100.7", 5555),
    }
    with trio.fail_after(5):
        await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_the_relay_door_is_the_api_behind_a_key_always(gateway):  # noqa: F811
    relay_routes = {(r.method, r.path) for r in gateway.routes() if Door.RELAY in r.doors}
    peer_routes = {(r.method, r.path) for r in gateway.routes() if Door.PEER in r.doors}
    assert relay_routes == peer_routes  # the API; not /metrics
    router = build_app(node_id="n" * 52, door=Door.RELAY)
    gateway.install(router, door=Door.RELAY)
    door = with_door(router, Door.RELAY)
    # Keys are optional on this node (security.require_api_keys is false): not here.
    status, body = await call(door, "/v1/models")
    assert status == 401 and "API key" in json.loads(body)["error"]["message"]
    # The same router without the door's mark would let it through: the mark is the rule.
    assert (await call(router, "/v1/models"))[0] == 200
    for path in ("/rpc", "/rpc/events", "/", "/ui/", "/metrics"):
        assert (await call(door, path))[0] == 404, path
    assert await call(door, "/health") == (200, b'{"status":"ok"}')


# --- the TCP front -----------------------------------------------------------------------


def client_hello(name: str) -> bytes:
    """A real ClientHello for `name`, from Python's own TLS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class FakeConnection:
    """Stands in for the node's iroh connection (the e2e test has the real one): each
    stream the relay opens is one end of an in-memory pair; the test holds the other."""

    def __init__(self) -> None:
        self.node_ends: trio.MemorySendChannel
        self.node_ends, self.opened = trio.open_memory_channel(10)
        self.is_closed = False

    async def open_stream(self):
        relay_end, node_end = trio.testing.memory_stream_pair()
        await self.node_ends.send(node_end)
        return relay_end


async def front_with_node(tmp_path, node: NodeId):
    registry = NameRegistry.open(tmp_path / "relay.db")
    await registry.activate(node, f"{node}.{DOMAIN}")
    conn = FakeConnection()
    config = RelayServerConfig(domain=DOMAIN, listen="127.0.0.1:0", hello_timeout=5)
    return TlsFront(config, registry, lambda n: conn if n == node else None), conn


async def node_reads_header(node_end) -> tuple[TlsProxyHeader, bytes]:
    reader = PreambleReader()
    while (preamble := reader.receive_data(await node_end.receive_some(65536))) is NEED_DATA:
        pass
    assert preamble.stream_type is StreamType.TLS_PROXY
    decoder = FrameDecoder()
    decoder.receive_data(reader.trailing_data)
    while (frame := decoder.next_frame()) is NEED_DATA:
        decoder.receive_data(await node_end.receive_some(65536))
    return msgspec.msgpack.decode(frame, type=TlsProxyHeader), decoder.take_remaining()


async def test_the_relay_forwards_exactly_the_bytes_it_received_both_ways(tmp_path):
    node = new_node()
    front, conn = await front_with_node(tmp_path, node)
    hello = client_hello(f"{node}.{DOMAIN}")
    after = bytes(range(256)) * 40  # what the client sends next, whatever it is
    answer = b"\x16\x03\x03" + bytes(range(200)) * 50
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(front.serve)
        host, port = addresses[0].rsplit(":", 1)
        with trio.fail_after(10):
            client = await trio.open_tcp_stream(host, int(port))
            # The ClientHello in pieces, as TCP may deliver it.
            for i in range(0, len(hello), 100):
                await client.send_all(hello[i : i + 100])
            node_end = await conn.opened.receive()
            header, received = await node_reads_header(node_end)
            assert header.sni == f"{node}.{DOMAIN}" and header.client_addr.startswith("127.0.0.1:")
            while len(received) < len(hello):
                received += await node_end.receive_some(65536)
            assert received == hello
            await node_end.send_all(answer)
            got = b""
            while len(got) < len(answer):
                got += await client.receive_some(65536)
            assert got == answer
            await client.send_all(after)
            received = b""
            while len(received) < len(after):
                received += await node_end.receive_some(65536)
            assert received == after
            await client.send_eof()
            assert await node_end.receive_some(10) == b""  # the half-close, passed on
            await node_end.aclose()
            assert await client.receive_some(10) == b""
            await client.aclose()
            await trio.testing.wait_all_tasks_blocked()  # the splice returned and counted
            assert front.open_connections == 0
        nursery.cancel_scope.cancel()
    assert front.outcomes["routed"] == 1
    assert front.bytes_in == len(hello) + len(after) and front.bytes_out == len(answer)


async def test_a_node_that_refuses_the_stream_gets_the_client_an_alert(tmp_path):
    node = new_node()
    front, conn = await front_with_node(tmp_path, node)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(front.serve)
        host, port = addresses[0].rsplit(":", 1)
        with trio.fail_after(10):
            client = await trio.open_tcp_stream(host, int(port))
            await client.send_all(client_hello(f"{node}.{DOMAIN}"))
            node_end = await conn.opened.receive()
            await node_reads_header(node_end)
            refusal = msgspec.msgpack.encode(StreamError(code=ErrorCode.UNAUTHORIZED))
            await node_end.send_all(encode_frame(refusal))
            got = b""
            while chunk := await client.receive_some(100):
                got += chunk
            await client.aclose()
        nursery.cancel_scope.cancel()
    assert got == UNRECOGNIZED_NAME_ALERT  # no byte of the node's frame reaches the client
    assert front.outcomes == {"node_refused": 1}


async def test_a_node_that_never_answers_is_unreachable_after_connect_timeout(tmp_path):
    """Opening a QUIC stream and writing to it need no answer, so a node that died
    without closing its connection is found by its silence: within connect_timeout,
    not after idle_timeout (it once held the client 300 s and counted node_refused)."""
    node = new_node()
    front, conn = await front_with_node(tmp_path, node)
    front.config = msgspec.structs.replace(front.config, connect_timeout=0.5, idle_timeout=300)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(front.serve)
        host, port = addresses[0].rsplit(":", 1)
        with trio.fail_after(5):
            client = await trio.open_tcp_stream(host, int(port))
            await client.send_all(client_hello(f"{node}.{DOMAIN}"))
            node_end = await conn.opened.receive()
            await node_reads_header(node_end)  # ... and then nothing
            got = b""
            while chunk := await client.receive_some(100):
                got += chunk
            await client.aclose()
        nursery.cancel_scope.cancel()
    assert got == UNRECOGNIZED_NAME_ALERT
    assert front.outcomes == {"node_unreachable": 1}


# --- the node's end of a tls_proxy stream ------------------------------------------------


@pytest.mark.parametrize("header_with_preamble", [True, False])
async def test_the_tls_door_serves_one_connection_and_lets_go_at_its_end(
    tmp_path, header_with_preamble
):
    """The header may come in the read that held the preamble or later (then the
    dispatch hands on no bytes at all); and once the client's input ends the stream is
    let go at once, not after hypercorn's keep-alive wait: each open one holds one of
    the ~100 streams a relay may have open to the node."""
    certificate = NodeCertificate(TlsConfig(), tmp_path)
    certificate.cover([f"n.{DOMAIN}"])

    async def app(scope, receive, send):
        await send_json(send, 200, {"client": scope["client"][0]})

    door = TlsDoor(certificate, lambda: app)
    relay_end, node_end = trio.testing.memory_stream_pair()
    header = encode_frame(
        msgspec.msgpack.encode(TlsProxyHeader(sni=f"n.{DOMAIN}", client_addr="203.0.113.9:4444"))
    )
    trailing = header if header_with_preamble else b""
    incoming = IncomingStream(None, new_node(), node_end, trailing)  # type: ignore[arg-type]
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed
    async with trio.open_nursery() as nursery:
        served = trio.Event()

        async def serve() -> None:
            await door.serve(incoming)
            served.set()

        nursery.start_soon(serve)
        with trio.fail_after(5):
            if not header_with_preamble:
                await relay_end.send_all(header)
            tls = trio.SSLStream(relay_end, context, server_hostname=f"n.{DOMAIN}")
            await tls.send_all(b"GET /h HTTP/1.1\r\nHost: n\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                answer += await tls.receive_some(65536)
            assert answer.startswith(b"HTTP/1.1 200") and b'{"client":"203.0.113.9"}' in answer
            await relay_end.send_eof()  # the browser closed its connection
            await served.wait()
