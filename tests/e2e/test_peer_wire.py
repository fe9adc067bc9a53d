"""What a real Gate node does on the wire where the spec had to be settled (issue 15):
a raw iroh endpoint, holding a key the node trusts, sends exactly the bytes a test
needs and reads exactly what comes back."""

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
from .test_peers import make_node, start  # noqa: F401  (make_node is a fixture)

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


def models_head(channel: Channel) -> bytes:
    return encode_preamble(StreamType.HTTP_PROXY) + channel.send(
        RequestHead(method="GET", target="/v1/models")
    )


def test_a_requester_that_finishes_before_end_always_gets_truncated(make_node):  # noqa: F811
    """§4.3, §7.2: the head and a FIN, no `end`. The node's app answers a GET without
    reading the body, so before the fix the answer raced the FIN: error 105 only
    sometimes, otherwise a complete 200. Now the response's `end` waits for the
    request's, and every one of 20 tries gets 105."""
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b])
    key = load_identity(data_dir(b.env), None)

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


def test_a_requester_may_send_end_after_the_response_head(make_node):  # noqa: F811
    """§7.2: the responder must not stop the request half before it is done, so a
    requester that sends `end` only once it has the head (as a GET's may) is served."""
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b])
    key = load_identity(data_dir(b.env), None)

    async def late_end(_endpoint: Endpoint, conn: Connection) -> list[str]:
        seen = []
        for _ in range(5):
            stream = await conn.open_stream()
            channel = Channel(HTTP_PROXY, Role.INITIATOR)
            await stream.send_all(models_head(channel))
            with trio.fail_after(STEP):
                head = await receive_event(stream, channel)
                assert isinstance(head, ResponseHead) and head.status == 200
                await trio.sleep(0.2)  # the app has answered by now
                await stream.send_all(channel.send(End()))  # a write error before the fix
                while not isinstance(event := await receive_event(stream, channel), End):
                    assert isinstance(event, Body)
            seen.append("end")
            await stream.aclose()
        return seen

    assert trio.run(with_connection, key, a, late_end) == ["end"] * 5


def test_a_known_stream_type_not_served_is_106(make_node):  # noqa: F811
    """§3.3: relay_control is known (102 would say it is not) but a node does not serve
    it; a node without a relay does not serve tls_proxy either."""
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b])
    key = load_identity(data_dir(b.env), None)

    async def offer(_endpoint: Endpoint, conn: Connection) -> list[int | None]:
        codes = []
        for kind in (StreamType.RELAY_CONTROL, StreamType.TLS_PROXY):
            stream = await conn.open_stream()
            await stream.send_all(encode_preamble(kind))
            codes.append(await first_error(stream))
        return codes

    assert trio.run(with_connection, key, a, offer) == [106, 106]


def test_a_refused_handshake_is_read_and_its_connection_serves_nothing(make_node):  # noqa: F811
    """§5.4, §2.3: a trusted key whose handshake names another node is refused. The
    refusal is always read (the node waits for us before closing the connection, where
    it used to close after 0.2 s), and an http_proxy stream on that connection is 300,
    although the key is trusted."""
    a, b = make_node("a"), make_node("b")
    start(a, trust=[b])
    key = load_identity(data_dir(b.env), None)
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
    assert not accepted and "differs" in reason
    assert code == ErrorCode.UNAUTHORIZED
