"""What a node does on the wire where the spec had to be settled (issue 15), checked on
a real Gate node and on the reference node (spec/reference) alike: a raw iroh endpoint,
holding a key the node trusts, sends exactly the bytes a test needs and reads exactly
what comes back."""

import msgspec
import pytest
import trio

from gate.identity import NodeIdentity, load_identity
from gate.protocol import (
    HTTP_PROXY,
    NODE_CONTROL,
    Body,
    Channel,
    End,
    ErrorCode,
    FrameDecoder,
    Handshake,
    HandshakeResponse,
    NodeId,
    NodeMessage,
    RequestHead,
    ResponseHead,
    Role,
    StreamError,
    StreamType,
    encode_preamble,
)
from gate.services.transport.framed import receive_event
from gate.services.transport.quic import Connection, Endpoint, QuicStream, bind_endpoint

from .gate_process import data_dir
from .test_peers import make_node, start  # noqa: F401  (fixtures)
from .test_reference_node import reference  # noqa: F401

pytestmark = pytest.mark.e2e

STEP = 10.0  # seconds any one step may take


async def with_connection(identity: NodeIdentity, node, body) -> object:
    endpoint = await bind_endpoint(identity.secret_key_bytes, host="127.0.0.1")
    try:
        with trio.fail_after(120):
            conn = await endpoint.connect(
                NodeId.parse(node.node_id), [f"127.0.0.1:{node.p2p_port}"]
            )
            return await body(endpoint, conn)
    finally:
        with trio.CancelScope(shield=True):
            await endpoint.aclose()


async def first_error(stream: QuicStream) -> int | None:
    """The code of the first frame if it is an error object, None at a clean end."""
    decoder = FrameDecoder()
    with trio.fail_after(STEP):
        frame = await receive_event(stream, decoder)
    if not isinstance(frame, bytes):
        return None
    return msgspec.msgpack.decode(frame, type=StreamError).code


@pytest.fixture(params=["gate", "reference"])
def target(request, make_node, reference):  # noqa: F811
    """A node (Gate, or the reference node answering with an echo) and a key it trusts."""
    friend = make_node("friend")  # never started: only its key is used
    key = load_identity(data_dir(friend.env), None)
    if request.param == "gate":
        return start(make_node("a"), trust=[friend]), key
    return reference("--echo", "--trust", friend.node_id), key


def models_head(channel: Channel) -> bytes:
    return encode_preamble(StreamType.HTTP_PROXY) + channel.send(
        RequestHead(method="GET", target="/v1/models")
    )


def test_a_requester_that_finishes_before_end_always_gets_truncated(target):
    """§4.3, §7.2: the head and a FIN, no `end`. The node's app answers a GET without
    reading the body, so before the fix the answer raced the FIN: error 105 only
    sometimes, otherwise a complete 200. Now the response's `end` waits for the
    request's, and every one of 20 tries gets 105."""
    a, key = target

    async def twenty(_endpoint: Endpoint, conn: Connection) -> list[object]:
        outcomes = []
        for _ in range(20):
            stream = await conn.open_stream()
            channel = Channel(HTTP_PROXY, Role.INITIATOR)
            await stream.send_all(models_head(channel))
            await stream.send_eof()
            events = []
            with trio.fail_after(STEP):
                while True:
                    try:
                        event = await receive_event(stream, channel)
                    except Exception as exc:  # the error frame, or the TRUNCATED it implies
                        events.append(getattr(exc, "code", repr(exc)))
                        break
                    events.append(type(event).__name__)
                    if isinstance(event, StreamError):
                        events.append(event.code)
                        break
                    if not isinstance(event, (ResponseHead, Body)):
                        break
            outcomes.append(events[-1])
            await stream.aclose()
        return outcomes

    outcomes = trio.run(with_connection, key, a, twenty)
    assert outcomes == [ErrorCode.TRUNCATED] * 20


def test_a_requester_may_send_end_late(target):
    """§7.2: the responder must not stop the request half before it is done, so a
    requester whose `end` comes late, after the head (Gate's app answers a GET from the
    head alone; the reference node waits for `end`), can still send it and is served."""
    a, key = target

    async def late_end(_endpoint: Endpoint, conn: Connection) -> list[str]:
        seen = []
        for _ in range(5):
            stream = await conn.open_stream()
            channel = Channel(HTTP_PROXY, Role.INITIATOR)
            await stream.send_all(models_head(channel))
            events = []
            with trio.move_on_after(0.5):  # Gate answers by now; the reference does not
                events.append(await receive_event(stream, channel))
            with trio.fail_after(STEP):
                await stream.send_all(channel.send(End()))  # a write error before the fix
                while not events or not isinstance(events[-1], End):
                    events.append(await receive_event(stream, channel))
            head, *body, _ = events
            assert isinstance(head, ResponseHead) and head.status == 200
            assert all(isinstance(event, Body) for event in body)
            seen.append("end")
            await stream.aclose()
        return seen

    assert trio.run(with_connection, key, a, late_end) == ["end"] * 5


def test_a_known_stream_type_not_served_is_106(target):
    """§3.3: relay_control is known (102 would say it is not) but a node does not serve
    it; a node without a relay does not serve tls_proxy either."""
    a, key = target

    async def offer(_endpoint: Endpoint, conn: Connection) -> list[int | None]:
        codes = []
        for kind in (StreamType.RELAY_CONTROL, StreamType.TLS_PROXY):
            stream = await conn.open_stream()
            await stream.send_all(encode_preamble(kind))
            codes.append(await first_error(stream))
        return codes

    assert trio.run(with_connection, key, a, offer) == [106, 106]


def test_a_refused_handshake_is_read_and_its_connection_serves_nothing(target):
    """§5.4, §2.3: a trusted key whose handshake names another node is refused. The
    refusal is always read (the node waits for us before closing the connection, where
    it used to close after 0.2 s), and an http_proxy stream on that connection is 300,
    although the key is trusted."""
    a, key = target
    impostor = str(NodeId(NodeIdentity.generate().public_key_bytes))

    async def refused(_endpoint: Endpoint, conn: Connection) -> tuple[bool, str, int | None]:
        control = await conn.open_stream()
        channel = Channel(NODE_CONTROL, Role.INITIATOR)
        hello = NodeMessage(
            version=1, id=1, timestamp=0, payload=Handshake(node_id=impostor, versions=[1])
        )
        await control.send_all(encode_preamble(StreamType.NODE_CONTROL) + channel.send(hello))
        with trio.fail_after(STEP):
            answer = await receive_event(control, channel)
        assert isinstance(answer, NodeMessage)
        assert isinstance(answer.payload, HandshakeResponse)
        await trio.sleep(1)  # longer than the old grace: the connection is still there
        stream = await conn.open_stream()
        await stream.send_all(models_head(Channel(HTTP_PROXY, Role.INITIATOR)))
        code = await first_error(stream)
        return answer.payload.accepted, answer.payload.reason or "", code

    accepted, reason, code = trio.run(with_connection, key, a, refused)
    assert not accepted and reason
    assert code == ErrorCode.UNAUTHORIZED
