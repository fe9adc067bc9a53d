"""Gate's transport over iroh: endpoints, authenticated connections, trio-style streams.

Loopback only, relays disabled, no discovery. Run as a script, this file is the helper
process of the two-process test: ``python test_transport.py <secret key hex>``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ed25519

from gate.identity import NodeIdentity
from gate.protocol.node_id import NodeId
from gate.services.transport import iroh_trio
from gate.services.transport.quic import (
    ALPN,
    BindError,
    ConnectError,
    Connection,
    ConnectionLost,
    Endpoint,
    PeerAddr,
    QuicStream,
    StreamReset,
    TransportError,
    bind_endpoint,
    parse_ticket,
)


async def bind(secret: bytes | None = None, **kwargs) -> Endpoint:
    kwargs.setdefault("host", "127.0.0.1")
    return await bind_endpoint(secret or NodeIdentity.generate().secret_key_bytes, **kwargs)


async def connect_pair(client: Endpoint, server: Endpoint) -> tuple[Connection, Connection]:
    """(client side, server side) of one connection from `client` to `server`."""
    accepted: list[Connection] = []

    async def accept() -> None:
        accepted.append(await (await server.accept()).accept())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        conn = await client.connect(server.node_id, server.direct_addresses)
    return conn, accepted[0]


async def stream_pair(a: Connection, b: Connection) -> tuple[QuicStream, QuicStream]:
    """A stream opened on `a` and accepted on `b` (QUIC shows it with its first byte)."""
    opened = await a.open_stream()
    await opened.send_all(b"\0")
    accepted = await b.accept_stream()
    assert await accepted.receive_some(1) == b"\0"
    return opened, accepted


@pytest.fixture
async def endpoints():
    iroh_trio.install()
    baseline = iroh_trio.pending_continuations()
    async with await bind() as a, await bind() as b:
        yield a, b
    with trio.fail_after(10):
        for _ in range(100):  # every iroh call the test made has finished or was freed
            if iroh_trio.pending_continuations() <= baseline:
                break
            await trio.sleep(0.01)
    assert iroh_trio.pending_continuations() == baseline


@pytest.fixture
async def connection(endpoints):
    """(client side, server side) of one connection between the two endpoints."""
    a, b = endpoints
    with trio.fail_after(10):
        client, server = await connect_pair(a, b)
    yield client, server
    client.close()
    server.close()


# ---------------------------------------------------------------------------------------
# Identity and addresses
# ---------------------------------------------------------------------------------------


async def test_node_id_is_the_public_key_of_the_secret_key():
    identity = NodeIdentity.generate()
    with trio.fail_after(10):
        async with await bind(identity.secret_key_bytes) as endpoint:
            assert endpoint.node_id == NodeId(identity.public_key_bytes)
            derived = ed25519.Ed25519PrivateKey.from_private_bytes(identity.secret_key_bytes)
            assert endpoint.node_id.bytes == derived.public_key().public_bytes_raw()
            assert NodeId.parse(str(endpoint.node_id)) == endpoint.node_id


async def test_each_side_sees_the_other_authenticated(endpoints, connection):
    a, b = endpoints
    client, server = connection
    assert client.remote_id == b.node_id
    assert server.remote_id == a.node_id
    assert client.alpn == server.alpn == ALPN


async def test_loopback_bind_listens_on_loopback_only():
    with trio.fail_after(10):
        async with await bind() as endpoint:
            assert endpoint.addresses
            for address in endpoint.addresses:
                host = address.rsplit(":", 1)[0]
                assert host in ("127.0.0.1", "[::1]"), endpoint.addresses
            assert endpoint.direct_addresses


async def test_ticket_round_trip_and_dial_by_ticket(endpoints):
    a, b = endpoints
    peer = parse_ticket(b.ticket())
    assert peer == b.peer_addr()
    assert peer == PeerAddr(b.node_id, tuple(b.direct_addresses), None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: b.serve(lambda conn: conn.wait_closed()))
            conn = await a.connect(peer.node_id, peer.addresses, iroh_relay_url=peer.iroh_relay_url)
            assert conn.remote_id == b.node_id
            conn.close()
            nursery.cancel_scope.cancel()


def test_parse_ticket_rejects_garbage():
    with pytest.raises(ValueError, match="not an endpoint ticket"):
        parse_ticket("endpointnotaticket")


async def test_bind_rejects_bad_arguments():
    key = NodeIdentity.generate().secret_key_bytes
    with pytest.raises(ValueError, match="32 bytes"):
        await bind_endpoint(b"short", host="127.0.0.1")
    with pytest.raises(ValueError, match="IP address"):
        await bind_endpoint(key, host="localhost")
    with pytest.raises(ValueError, match="port"):
        await bind_endpoint(key, host="127.0.0.1", port=70000)
    with pytest.raises(ValueError, match="relay"):
        await bind_endpoint(key, host="127.0.0.1", iroh_relay="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="relay URL"):
        await bind_endpoint(key, host="127.0.0.1", iroh_relay=["not a url"])


async def test_bind_to_a_port_in_use_is_a_bind_error():
    with trio.fail_after(10):
        async with await bind() as first:
            port = int(first.addresses[0].rsplit(":", 1)[1])
            with pytest.raises(BindError, match=r"127\.0\.0\.1"):
                await bind(port=port)


# ---------------------------------------------------------------------------------------
# Connecting and accepting
# ---------------------------------------------------------------------------------------


async def test_connect_to_the_wrong_node_id_is_a_connect_error(endpoints):
    a, b = endpoints
    stranger = NodeId(NodeIdentity.generate().public_key_bytes)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: b.serve(lambda conn: conn.wait_closed()))
            with pytest.raises(ConnectError, match="handshake failed"):
                await a.connect(stranger, b.direct_addresses)
            nursery.cancel_scope.cancel()


async def test_connect_with_an_unknown_alpn_is_a_connect_error(endpoints):
    a, b = endpoints
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: b.serve(lambda conn: conn.wait_closed()))
            with pytest.raises(ConnectError, match="protocol"):
                await a.connect(b.node_id, b.direct_addresses, alpn=b"other/1")
            # The refused handshake did not stop the server.
            conn = await a.connect(b.node_id, b.direct_addresses)
            conn.close()
            nursery.cancel_scope.cancel()


async def test_connect_without_any_address_is_a_connect_error(endpoints):
    a, b = endpoints
    with trio.fail_after(10), pytest.raises(ConnectError, match="No addressing information"):
        await a.connect(b.node_id, [])


@pytest.mark.parametrize("address", ["garbage", "1.2.3.4", "::1:5", "999.1.1.1:5", "1.2.3.4:0"])
async def test_connect_rejects_malformed_addresses(endpoints, address):
    a, b = endpoints
    with pytest.raises(ValueError, match="not a socket address"):
        await a.connect(b.node_id, [address])


async def test_connect_to_a_silent_address_waits_for_the_caller_to_cancel(endpoints):
    a, b = endpoints
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as silent:
        await silent.bind(("127.0.0.1", 0))
        host, port = silent.getsockname()
        with trio.move_on_after(0.2) as scope:
            await a.connect(b.node_id, [f"{host}:{port}"])
        assert scope.cancelled_caught


async def test_accept_raises_closed_resource_error_when_the_endpoint_closes():
    with trio.fail_after(10):
        endpoint = await bind()
        async with trio.open_nursery() as nursery:

            async def accept() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await endpoint.accept()

            nursery.start_soon(accept)
            await trio.testing.wait_all_tasks_blocked()
            await endpoint.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await endpoint.accept()
        with pytest.raises(trio.ClosedResourceError):
            await endpoint.connect(endpoint.node_id, endpoint.addresses)
        await endpoint.aclose()  # idempotent


async def test_incoming_connection_is_consumed_once(endpoints):
    a, b = endpoints
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.connect, b.node_id, b.direct_addresses)
            incoming = await b.accept()
            assert incoming.remote_address is not None
            assert incoming.remote_address.startswith("127.0.0.1:")
            conn = await incoming.accept()
            with pytest.raises(trio.ClosedResourceError):
                await incoming.accept()
            conn.close()


async def test_refused_incoming_is_a_connect_error_for_the_dialer(endpoints):
    a, b = endpoints
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def refuse() -> None:
                await (await b.accept()).refuse()

            nursery.start_soon(refuse)
            with pytest.raises(ConnectError):
                await a.connect(b.node_id, b.direct_addresses)


async def test_serve_runs_a_handler_per_connection(endpoints):
    a, b = endpoints
    seen: list[NodeId] = []

    async def handler(conn: Connection) -> None:
        seen.append(conn.remote_id)
        stream = await conn.accept_stream()
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(b.serve, handler)
            for _ in range(3):
                async with await a.connect(b.node_id, b.direct_addresses) as conn:
                    stream = await conn.open_stream()
                    await stream.send_all(b"shout")
                    await stream.send_eof()
                    assert await receive_all(stream) == b"SHOUT"
            nursery.cancel_scope.cancel()
    assert seen == [a.node_id] * 3


async def test_connection_closed_by_peer_is_connection_lost_with_code_and_reason(connection):
    client, server = connection
    with trio.fail_after(10):
        stream, _peer = await stream_pair(client, server)
        server.close(42, "go away")
        with pytest.raises(ConnectionLost) as info:
            await stream.receive_some()
        assert (info.value.code, info.value.reason, info.value.locally) == (42, "go away", False)
        assert isinstance(info.value, trio.BrokenResourceError)
        assert "closed by peer" in await client.wait_closed()
        assert client.is_closed
        with pytest.raises(ConnectionLost, match="code 42"):
            await client.open_stream()
        with pytest.raises(ConnectionLost):
            await client.accept_stream()
        with pytest.raises(ConnectionLost) as info:
            await server.open_stream()
        assert info.value.locally


async def test_closing_with_a_reason_says_why_on_our_own_streams(connection):
    client, server = connection
    with trio.fail_after(10):
        stream, _peer = await stream_pair(client, server)
        client.close(0, "no pong within 4s of a ping")
        client.close(0, "a later close changes nothing")
        with pytest.raises(ConnectionLost) as info:
            await stream.receive_some()
        assert info.value.locally
        assert str(info.value) == "connection closed locally: no pong within 4s of a ping"
        with pytest.raises(ConnectionLost) as again:  # the error stays, as it was
            await stream.receive_some()
        assert again.value is info.value


async def test_close_validates_its_code(connection):
    client, _ = connection
    with pytest.raises(ValueError):
        client.close(-1)
    with pytest.raises(ValueError):
        client.close(2**62)


# ---------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------


async def receive_all(stream: QuicStream, max_bytes: int | None = None) -> bytes:
    chunks = []
    while data := await stream.receive_some(max_bytes):
        chunks.append(data)
    return b"".join(chunks)


async def echo(stream: QuicStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def test_trio_half_closeable_stream_conformance(connection):
    client, server = connection

    async def maker() -> tuple[QuicStream, QuicStream]:
        return await stream_pair(client, server)

    with trio.fail_after(20):
        await trio.testing.check_half_closeable_stream(maker, None)


async def test_echo_byte_at_a_time(connection):
    client, server = connection
    payload = bytes(range(256))
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, theirs)
            for byte in payload:
                await ours.send_all(bytes([byte]))
                assert await ours.receive_some(1) == bytes([byte])
            await ours.send_eof()
            assert await ours.receive_some(1) == b""
        await ours.aclose()


@pytest.mark.parametrize("size", [0, 1, 65536, 1024 * 1024 + 1, 3 * 1024 * 1024 + 7])
async def test_echo_round_trip_sizes(connection, size):
    client, server = connection
    payload = os.urandom(size)
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)
        received: list[bytes] = []

        async def read_back() -> None:
            received.append(await receive_all(ours))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, theirs)
            nursery.start_soon(read_back)
            await ours.send_all(payload)
            await ours.send_all(bytearray(payload[:100]))
            await ours.send_all(memoryview(payload)[-100:])
            await ours.send_eof()
        assert received == [payload + payload[:100] + payload[-100:]]
        await ours.aclose()


async def test_half_close_then_reply(connection):
    client, server = connection
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)
        await ours.send_all(b"request")
        await ours.send_eof()
        assert await receive_all(theirs) == b"request"  # the peer sees b"" after our EOF
        with pytest.raises(trio.ClosedResourceError):
            await ours.send_all(b"more")
        await ours.send_eof()  # again: a no-op
        await theirs.send_all(b"reply")  # the other direction is still open
        await theirs.send_eof()
        assert await receive_all(ours) == b"reply"
        await ours.aclose()
        await theirs.aclose()


async def test_graceful_close_finishes_ours_and_stops_theirs_with_code_0(connection):
    """aclose() lets go of iroh's stream halves; dropping them must finish our half
    (after what we wrote) and stop the peer's half, as finish() and stop(0) would."""
    client, server = connection
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)
        await ours.send_all(b"last words")
        await ours.aclose()
        assert await receive_all(theirs) == b"last words"  # then EOF, not a reset
        with pytest.raises(StreamReset) as info:
            while True:
                await theirs.send_all(b"x" * 1000)
        assert info.value.code == 0
        await theirs.aclose()


async def test_reset_reaches_the_peer_as_stream_reset(connection):
    client, server = connection
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)
        await ours.reset(7)
        with pytest.raises(StreamReset) as info:
            await theirs.receive_some()
        assert info.value.code == 7
        assert isinstance(info.value, trio.BrokenResourceError)
        with pytest.raises(StreamReset):  # sticky
            await theirs.receive_some()
        # Our reset also stopped their sending half.
        with pytest.raises(StreamReset) as info:
            while True:
                await theirs.send_all(b"x" * 1000)
        assert info.value.code == 7
        with pytest.raises(trio.ClosedResourceError):
            await ours.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await ours.receive_some()
        await theirs.aclose()
    with pytest.raises(ValueError):
        await ours.reset(-1)


async def test_close_during_a_blocked_send_resets_instead_of_finishing(connection):
    """A truncated message must never look complete to the peer."""
    client, server = connection
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await ours.send_all(b"x" * (64 * 1024 * 1024))  # beyond flow control

            nursery.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.05)
            await ours.aclose()
        with pytest.raises(StreamReset):
            while await theirs.receive_some():
                pass
        await theirs.aclose()


async def test_cancelled_receives_lose_no_data(connection):
    client, server = connection
    expected = bytes(range(256)) * 64
    got = bytearray()
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)

        async def reader() -> None:
            while True:
                with trio.move_on_after(0.0003):
                    data = await theirs.receive_some(7)
                    if not data:
                        return
                    got.extend(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for offset in range(0, len(expected), 100):
                await ours.send_all(expected[offset : offset + 100])
                await trio.lowlevel.checkpoint()
            await ours.send_eof()
    assert bytes(got) == expected


async def test_many_streams_on_one_connection_concurrently(connection):
    client, server = connection
    results: dict[int, bytes] = {}

    async def accept_all(nursery: trio.Nursery) -> None:
        while True:
            nursery.start_soon(echo, await server.accept_stream())

    async def one(i: int) -> None:
        async with await client.open_stream() as stream:
            payload = os.urandom(100 + i * 997)
            await stream.send_all(payload)
            await stream.send_eof()
            results[i] = await receive_all(stream)
            assert results[i] == payload

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_all, nursery)
            async with trio.open_nursery() as clients:
                for i in range(64):
                    clients.start_soon(one, i)
            nursery.cancel_scope.cancel()
    assert sorted(results) == list(range(64))


async def test_no_iroh_exception_escapes_a_dead_connection(connection):
    client, server = connection
    with trio.fail_after(10):
        ours, theirs = await stream_pair(client, server)
        client.close(3, "bye")
        calls = [
            lambda: ours.send_all(b"x"),
            lambda: ours.receive_some(),
            ours.send_eof,
            theirs.receive_some,
            lambda: theirs.send_all(b"x" * 100_000),
            client.open_stream,
            server.open_stream,
            server.accept_stream,
            ours.aclose,
            lambda: theirs.reset(5),
        ]
        for call in calls:
            with contextlib.suppress(TransportError, trio.ClosedResourceError):
                await call()


async def test_streams_and_connections_are_async_context_managers(connection):
    client, server = connection
    with trio.fail_after(10):
        async with await client.open_stream() as stream:
            await stream.send_all(b"hi")
        assert stream.is_closed
        peer = await server.accept_stream()
        assert await receive_all(peer) == b"hi"
        async with client:
            pass
        assert client.is_closed


# ---------------------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------------------


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        data = await stream.receive_some()
        if not data:
            raise AssertionError(f"helper exited early; output so far: {bytes(buffer)!r}")
        buffer.extend(data)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def start_helper(
    nursery: trio.Nursery, theirs: NodeIdentity, *, check: bool
) -> tuple[trio.Process, bytearray, str, str]:
    """This file run as a helper process with `theirs` key (_helper_echo_once); returns
    it, the buffer its output is read through, and the node id and address it printed.
    run_process kills it if anything in `nursery` fails or times out."""
    process = await nursery.start(
        functools.partial(
            trio.run_process,
            [sys.executable, __file__, theirs.secret_key_bytes.hex()],
            stdout=subprocess.PIPE,
            check=check,
        )
    )
    assert process.stdout is not None
    buffer = bytearray()
    node_id, address = (await read_line(process.stdout, buffer)).split()
    return process, buffer, node_id, address


async def test_two_processes_connect_and_echo():
    ours, theirs = NodeIdentity.generate(), NodeIdentity.generate()
    payload = os.urandom(1024 * 1024 + 3)
    with trio.fail_after(30):
        async with await bind(ours.secret_key_bytes) as endpoint, trio.open_nursery() as nursery:
            process, buffer, node_id, address = await start_helper(nursery, theirs, check=True)
            assert NodeId.parse(node_id) == NodeId(theirs.public_key_bytes)

            conn = await endpoint.connect(NodeId.parse(node_id), [address])
            assert conn.remote_id == NodeId(theirs.public_key_bytes)
            # The helper reports the id it authenticated for us.
            stream = await conn.open_stream()
            await stream.send_all(payload[:1])
            assert NodeId.parse(await read_line(process.stdout, buffer)) == endpoint.node_id

            received: list[bytes] = []

            async def read_back() -> None:
                received.append(await receive_all(stream))

            async with trio.open_nursery() as readers:
                readers.start_soon(read_back)
                await stream.send_all(payload[1:])
                await stream.send_eof()
            assert received == [payload]
            conn.close()
            assert await process.wait() == 0
            await process.stdout.aclose()


async def test_probes_are_answered_until_the_peer_is_killed():
    """Connection.probe: the peer's QUIC stack answers each probe while it runs (the
    count of datagrams from it moves); once it is killed without a goodbye, the count
    stops moving. The relay client tells a killed relay by this."""
    ours, theirs = NodeIdentity.generate(), NodeIdentity.generate()
    with trio.fail_after(30):
        async with await bind(ours.secret_key_bytes) as endpoint, trio.open_nursery() as nursery:
            process, buffer, node_id, address = await start_helper(nursery, theirs, check=False)
            conn = await endpoint.connect(NodeId.parse(node_id), [address])
            stream = await conn.open_stream()
            await stream.send_all(b"x")  # the helper now echoes, alive, until we finish
            await read_line(process.stdout, buffer)
            await stream.receive_some()

            async def counts(rounds: int) -> list[int]:
                seen = []
                for _ in range(rounds):
                    seen.append(conn.probe())
                    await trio.sleep(0.2)
                return seen

            alive = await counts(5)
            assert alive[-1] > alive[0]
            process.kill()
            await process.wait()
            await trio.sleep(0.3)  # answers already on their way
            dead = await counts(5)
            assert dead[-1] == dead[0]
            conn.close()
            await process.stdout.aclose()


async def _helper_echo_once(secret: bytes) -> None:
    async with await bind_endpoint(secret, host="127.0.0.1") as endpoint:
        print(endpoint.node_id, endpoint.direct_addresses[0], flush=True)
        conn = await (await endpoint.accept()).accept()
        stream = await conn.accept_stream()
        print(conn.remote_id, flush=True)
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()
        with trio.move_on_after(10):
            await conn.wait_closed()


# ---------------------------------------------------------------------------------------
# Throughput (a figure to read with -s, not an assertion)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("write_size", [64 * 1024, 1024 * 1024])
async def test_throughput_16_mib_one_stream(connection, write_size):
    client, server = connection
    total = 16 * 1024 * 1024
    chunk = os.urandom(write_size)
    with trio.fail_after(30):
        ours, theirs = await stream_pair(client, server)
        received = 0

        async def sink() -> None:
            nonlocal received
            while data := await theirs.receive_some():
                received += len(data)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink)
            for _ in range(total // write_size):
                await ours.send_all(chunk)
            await ours.send_eof()
        elapsed = time.perf_counter() - started
    assert received == total
    print(
        f"\nthroughput: 16 MiB over one stream in {elapsed * 1000:.0f} ms = "
        f"{total / elapsed / 1e6:.0f} MB/s ({write_size // 1024} KiB writes)"
    )


async def test_latency_figures(endpoints):
    a, b = endpoints
    with trio.fail_after(10):
        started = time.perf_counter()
        async with await bind():
            bind_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        client, server = await connect_pair(a, b)
        connect_ms = (time.perf_counter() - started) * 1000
        async with trio.open_nursery() as nursery:

            async def serve_streams() -> None:
                while True:
                    stream = await server.accept_stream()
                    await stream.send_all(await stream.receive_some())
                    await stream.aclose()

            nursery.start_soon(serve_streams)
            rounds = 200
            started = time.perf_counter()
            for _ in range(rounds):
                stream = await client.open_stream()
                await stream.send_all(b"ping")
                assert await stream.receive_some() == b"ping"
                await stream.aclose()
            stream_ms = (time.perf_counter() - started) * 1000 / rounds
            nursery.cancel_scope.cancel()
        client.close()
    print(
        f"\nlatency: bind {bind_ms:.1f} ms, connect {connect_ms:.1f} ms, "
        f"one request/response stream {stream_ms:.2f} ms"
    )


if __name__ == "__main__":
    trio.run(_helper_echo_once, bytes.fromhex(sys.argv[1]))
