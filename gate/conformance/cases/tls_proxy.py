"""Cases for §7.4 (TlsProxy) against a relay: the runner registers and activates its
own name on the relay's iroh endpoint, then connects to the relay's TLS port (--front)
as a browser would, and reads the tls_proxy stream the relay opens back to it.

Two tables: a ClientHello the relay routes (`_forwarded`) and first bytes it refuses
(`_refused`); a row's `send` is a function of the registered session giving the bytes
the client sends, in TCP segments of `pieces` bytes where given."""

from __future__ import annotations

import trio

from gate.conformance.probe import STEP_TIMEOUT, Probe, Wire
from gate.conformance.registry import CaseFailed, CaseSkipped, Level, Row, case, table
from gate.conformance.relay_session import RelaySession, open_relay_control
from gate.conformance.tls_hello import client_hello, records
from gate.conformance.wire import TLS_PROXY, hexdump, other_node_id, unpack

# What the runner, as the node, answers first: a TLS record (the relay tells a refusal,
# a frame starting 00, from TLS by the first byte, §3.5).
SERVER_BYTES = b"\x16\x03\x03\x00\x05hello"
QUIET = 2.0  # how long "no stream was opened" is watched for


async def _registered(probe: Probe) -> RelaySession:
    if probe.target.front is None:
        raise CaseSkipped("needs --front HOST:PORT, the relay's TLS port")
    session = await open_relay_control(probe)
    name = await session.name()
    answer = await session.ask("activate_domain", "activation_response", domain=name)
    if not answer.get("ok"):
        raise CaseSkipped(f"the relay did not activate the name: {answer.get('reason')}")
    return session


async def _client(probe: Probe) -> trio.SocketStream:
    assert probe.target.front is not None
    host, port = probe.target.front
    probe.note(f"TCP connect to {host}:{port}")
    with trio.fail_after(STEP_TIMEOUT):
        return await trio.open_tcp_stream(host, port)


async def _send(
    probe: Probe, client: trio.SocketStream, data: bytes, size: int | None = None
) -> None:
    """`data` to the relay's TLS port: at once, or in segments of `size` bytes."""
    if size is None:
        probe.note(f"TCP sent {hexdump(data)}")
        await client.send_all(data)
        return
    probe.note(f"TCP sent in segments of {size}: {hexdump(data)}")
    for i in range(0, len(data), size):
        await client.send_all(data[i : i + size])
        await trio.sleep(0.001)  # one segment each, as far as Nagle and the kernel allow


async def _routed(probe: Probe, session: RelaySession, sent: bytes) -> Wire:
    """The tls_proxy stream the relay opens: preamble, header naming us, then `sent`."""
    with trio.fail_after(STEP_TIMEOUT):
        stream = await session.conn.accept_stream()
    wire = Wire(probe, stream, "tls_proxy")
    got = b""
    with trio.fail_after(STEP_TIMEOUT):
        while len(got) < 8:
            data = await stream.receive_some(8 - len(got))
            if not data:
                break
            got += data
    wire.note(f"received preamble {hexdump(got)}")
    if got[:4] != b"GATE" or len(got) < 8 or got[6] != TLS_PROXY:
        raise CaseFailed(f"not a tls_proxy preamble: {got.hex(' ')}", probe.evidence)
    header = await wire.frame()
    if not isinstance(header, bytes):
        raise CaseFailed(f"the stream {header} before its TlsProxyHeader", probe.evidence)
    value = unpack(header)
    if (
        value.get("type") != "tls_proxy_header"
        or str(value.get("sni", "")).lower().rstrip(".") != session.domain
    ):
        raise CaseFailed(
            f"header {value!r:.200}; expected the sni {session.domain}", probe.evidence
        )
    rest = wire.decoder.take_remaining()
    with trio.fail_after(STEP_TIMEOUT):
        while len(rest) < len(sent):
            data = await stream.receive_some(65536)
            if not data:
                break
            rest += data
    wire.note(f"received after the header {hexdump(rest)}")
    if rest != sent:
        raise CaseFailed(
            f"the relay forwarded {len(rest)} bytes that differ from the {len(sent)} sent",
            probe.evidence,
        )
    return wire


async def _no_stream(probe: Probe, session: RelaySession, client: trio.SocketStream) -> str:
    """The relay closes `client` and opens no stream to the runner."""
    with trio.move_on_after(QUIET):
        await session.conn.accept_stream()
        raise CaseFailed("the relay opened a tls_proxy stream for it", probe.evidence)
    got = b""
    with trio.move_on_after(STEP_TIMEOUT) as waiting:
        try:
            while data := await client.receive_some(65536):
                got += data
        except trio.BrokenResourceError:
            pass
    if waiting.cancelled_caught:
        raise CaseFailed("the relay kept the client's connection open", probe.evidence)
    probe.note(f"TCP received {hexdump(got)}, then the end")
    if got and got[0] != 21:
        raise CaseFailed(f"the client got {got[:16].hex(' ')}, not an alert", probe.evidence)
    return "closed" + (" with an alert" if got else "") + ", no stream opened"


async def _hello_routed(
    probe: Probe, session: RelaySession, hello: bytes, segment: int | None = None
) -> tuple[trio.SocketStream, Wire]:
    """`hello` sent by a client of the relay's TLS port, and forwarded unchanged on the
    tls_proxy stream the relay opens to us."""
    client = await _client(probe)
    await _send(probe, client, hello, segment)
    return client, await _routed(probe, session, hello)


# --- a ClientHello for our activated name, routed to us unchanged ---------------------------


async def _forwarded(probe: Probe, row: Row) -> str:
    session = await _registered(probe)
    hello = row.send(session)
    await _hello_routed(probe, session, hello, row.pieces)
    segments = "" if row.pieces is None else f" (sent in {row.pieces}-byte segments)"
    return f"{len(hello)} bytes{segments} forwarded unchanged after the header"


table(
    [
        Row(
            "relay/7.4/1",
            "routes a ClientHello for an activated name, forwarding its bytes unchanged",
            "The relay MUST NOT terminate, decrypt or alter TLS.",
            send=lambda s: records(client_hello(s.domain)),
        ),
        Row(
            "relay/7.4/2",
            "routes a 12 KiB ClientHello over 4 records sent in 100-byte TCP segments",
            "A relay MUST collect the ClientHello across TCP segments and across TLS records",
            send=lambda s: records(client_hello(s.domain, size=12 * 1024), 3100),
            pieces=100,
        ),
        Row(
            "relay/7.4/13",
            "routes a ClientHello of 16 KiB of handshake, in 2 records and 1000-byte segments",
            "up to a bound of at least 16 KiB of handshake",
            send=lambda s: records(client_hello(s.domain, size=16 * 1024), 9000),
            pieces=1000,
        ),
        Row(
            "relay/7.4/10",
            "routes a name in upper case with a trailing dot",
            "The name is compared lower-cased and without a trailing dot.",
            send=lambda s: records(client_hello(s.domain.upper() + ".")),
        ),
    ],
    _forwarded,
)


# --- first bytes the relay refuses: it closes the client, opening no stream ------------------


async def _refused(probe: Probe, row: Row) -> str:
    session = await _registered(probe)
    client = await _client(probe)
    await _send(probe, client, row.send(session))
    return await _no_stream(probe, session, client)


_ONLY_ITS_NODE = (
    "The relay MUST only open tls_proxy streams to the node whose NodeId is the first label of "
    "the SNI"
)
table(
    [
        Row(
            "relay/7.4/4",
            "closes a connection for a name no node activated, opening no stream",
            "The relay MUST only open tls_proxy streams to the node whose NodeId is the first "
            "label of the SNI, and only for a domain that node activated (§6.3).",
            send=lambda s: records(client_hello(f"{other_node_id()}.{s.relay_domain}")),
        ),
        Row(
            "relay/7.4/5",
            "closes a connection whose first bytes are not TLS (an HTTP request)",
            "It MUST refuse a connection whose first bytes are not a ClientHello",
            send=lambda s: b"GET / HTTP/1.1\r\nHost: " + s.domain.encode() + b"\r\n\r\n",
        ),
        Row(
            "relay/7.4/6",
            "closes a connection whose ClientHello has no server_name",
            "whose ClientHello has no server_name",
            send=lambda _: records(client_hello(None)),
        ),
        Row(
            "relay/7.4/7",
            "closes a connection whose server name is an IP address",
            "or whose host name is an IP address (RFC 6066 §3) or not a DNS host name",
            send=lambda _: records(client_hello("127.0.0.1")),
        ),
        Row(
            "relay/7.4/8",
            "closes a connection for the node's id under another domain",
            _ONLY_ITS_NODE,
            send=lambda s: records(client_hello(f"{s.domain.split('.')[0]}.other.invalid")),
        ),
        Row(
            "relay/7.4/9",
            "closes a connection whose first record is not a handshake (an alert)",
            "records other than handshake, another handshake message, broken lengths, duplicate "
            "extensions",
            send=lambda _: b"\x15\x03\x03\x00\x02\x02\x28",
        ),
    ],
    _refused,
)


# --- the cases of their own shape -------------------------------------------------------------


@case(
    "relay/7.4/3",
    "forwards bytes both ways unchanged after the ClientHello",
    "the relay forwards every byte it received from the client",
)
async def both_ways(probe: Probe) -> str:
    session = await _registered(probe)
    client, wire = await _hello_routed(probe, session, records(client_hello(session.domain)))
    down = SERVER_BYTES + bytes(range(256)) * 40
    await wire.send(down)
    got = b""
    with trio.fail_after(STEP_TIMEOUT):
        while len(got) < len(down):
            data = await client.receive_some(65536)
            if not data:
                break
            got += data
    if got != down:
        raise CaseFailed(
            f"the client got {len(got)} bytes that differ from the {len(down)} sent", probe.evidence
        )
    up = bytes(range(255, -1, -1)) * 40
    await client.send_all(up)
    got = b""
    with trio.fail_after(STEP_TIMEOUT):
        while len(got) < len(up):
            data = await wire.stream.receive_some(65536)
            if not data:
                break
            got += data
    if got != up:
        raise CaseFailed(
            f"the node got {len(got)} bytes that differ from the {len(up)} sent", probe.evidence
        )
    return f"{len(down)} bytes down, {len(up)} up, unchanged"


@case(
    "relay/7.4/11",
    "mirrors the client's end of input as the stream's finish",
    "Each side SHOULD mirror the end of its TCP or TLS input as finish",
    level=Level.SHOULD,
)
async def mirrors_end(probe: Probe) -> str:
    session = await _registered(probe)
    client, wire = await _hello_routed(probe, session, records(client_hello(session.domain)))
    await wire.send(SERVER_BYTES)
    await client.send_eof()
    with trio.fail_after(STEP_TIMEOUT):
        while await wire.stream.receive_some(65536):
            pass
    return "the stream finished after the client's FIN"


@case(
    "relay/7.4/12",
    "gives up on a client that sends half a ClientHello and waits",
    "SHOULD give up on a client that has not sent it whole within a few seconds.",
    level=Level.SHOULD,
)
async def slow_hello(probe: Probe) -> str:
    session = await _registered(probe)
    client = await _client(probe)
    hello = records(client_hello(session.domain))
    await _send(probe, client, hello[:20])
    start = trio.current_time()
    with trio.move_on_after(30) as waiting:
        try:
            while await client.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    if waiting.cancelled_caught:
        raise CaseFailed("still open after 30 s", probe.evidence)
    return f"closed after {trio.current_time() - start:.1f} s"
