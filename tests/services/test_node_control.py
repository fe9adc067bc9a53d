"""The responder side of NodeControl over in-memory streams, on trio's mock clock: how
long a silent dialer keeps its channel (spec §5.5) and when a refused connection is
closed (§5.4, §2.3)."""

import trio
import trio.testing

from gate.identity import NodeIdentity
from gate.protocol import (
    Capabilities,
    ErrorCode,
    Handshake,
    HandshakeResponse,
    NodeError,
    NodeId,
    Role,
)
from gate.services.p2p.dispatch import IncomingStream
from gate.services.p2p.session import ControlStream, NodeControl


def node_id() -> NodeId:
    return NodeId(NodeIdentity.generate().public_key_bytes)


ME, PEER = node_id(), node_id()


class Peers:
    """What NodeControl asks of the trusted peers: whom to trust."""

    def __init__(self, *trusted: NodeId) -> None:
        self.ids = set(trusted)

    def trusted(self, remote: NodeId) -> bool:
        return remote in self.ids

    def get(self, remote: NodeId) -> None:
        return None


class Connection:
    """Records how and when the responder closed the connection."""

    def __init__(self) -> None:
        self.closed: tuple[int, float] | None = None

    def close(self, code: int = 0, reason: str = "") -> None:
        self.closed = (code, trio.current_time())


async def handshake(peers: Peers) -> tuple[ControlStream, trio.abc.Stream, Connection, object]:
    client, server = trio.testing.memory_stream_pair()
    conn = Connection()
    control = NodeControl(
        ME,
        peers,  # type: ignore[arg-type]
        local_capabilities=lambda: Capabilities(node_id=str(ME)),
        heartbeat_interval=lambda: 0.5,  # the old limit was 3 intervals of silence
    )
    incoming = IncomingStream(conn, PEER, server, b"")  # type: ignore[arg-type]
    initiator = ControlStream(client, Role.INITIATOR)
    return initiator, client, conn, (control, incoming)


async def test_a_dialer_that_only_answers_pings_keeps_its_channel_for_a_minute(autojump_clock):
    initiator, client, conn, (control, incoming) = await handshake(Peers(PEER))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.respond, incoming)
        await initiator.send(Handshake(node_id=str(PEER), versions=[1]))
        accepted = await initiator.receive()
        assert accepted is not None and isinstance(accepted.payload, HandshakeResponse)
        assert accepted.payload.accepted
        silent_since = trio.current_time()
        ended = await initiator.receive()  # the dialer never pings
        assert ended is not None and isinstance(ended.payload, NodeError)
        assert ended.payload.code == ErrorCode.TIMEOUT
        assert trio.current_time() - silent_since >= 60  # §5.5: never less than a minute
        assert conn.closed is None  # not before the error is read
        await client.send_eof()
    assert conn.closed is not None and conn.closed[0] == ErrorCode.TIMEOUT


async def test_a_refused_connection_is_closed_only_once_the_refusal_is_read(autojump_clock):
    initiator, client, conn, (control, incoming) = await handshake(Peers())  # PEER untrusted
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.respond, incoming)
        await initiator.send(Handshake(node_id=str(PEER), versions=[1]))
        refused = await initiator.receive()
        assert refused is not None and isinstance(refused.payload, HandshakeResponse)
        assert not refused.payload.accepted and refused.payload.reason
        await trio.sleep(2)  # the old responder closed the connection after 0.2 s
        assert conn.closed is None
        read_at = trio.current_time()
        await client.send_eof()  # the dialer has read it and lets go
    assert conn.closed is not None
    assert conn.closed[0] == ErrorCode.UNAUTHORIZED and conn.closed[1] == read_at
