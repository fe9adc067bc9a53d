"""The channel state machines: every (state, sender, event) triple is walked."""

import itertools

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.protocol import (
    EOF,
    HTTP_PROXY,
    NEED_DATA,
    NODE_CONTROL,
    RELAY_CONTROL,
    Body,
    Channel,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    StreamError,
    encode_frame,
    negotiate_version,
)
from spec.examples import (
    HTTP_FRAMES,
    NODE_PAYLOADS,
    RELAY_PAYLOADS,
    node_message,
    relay_message,
)

SPECS = {
    "node_control": (NODE_CONTROL, {k: node_message(v) for k, v in NODE_PAYLOADS.items()}),
    "relay_control": (RELAY_CONTROL, {k: relay_message(v) for k, v in RELAY_PAYLOADS.items()}),
    "http_proxy": (HTTP_PROXY, HTTP_FRAMES),
}


def all_triples():
    for name, (spec, examples) in SPECS.items():
        assert set(examples) == spec.events, "every event needs an example message"
        for state, sender, event in itertools.product(
            sorted(spec.states, key=repr), Role, examples
        ):
            yield pytest.param(
                name, state, sender, event, id=f"{name}-{state}-{sender.value}-{event}"
            )


@pytest.mark.parametrize(("name", "state", "sender", "event"), list(all_triples()))
def test_every_triple_follows_the_table(name, state, sender, event):
    spec, examples = SPECS[name]
    message = examples[event]
    expected = spec.table.get((state, sender, event))

    # As sender: send() either advances to the table's state or refuses locally.
    ours = Channel(spec, sender)
    ours.state = state
    if expected is None:
        with pytest.raises(LocalProtocolError) as info:
            ours.send(message)
        assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
        assert ours.state == state
    else:
        wire = ours.send(message)
        assert ours.state == expected

    # As receiver of the same message from the peer.
    theirs = Channel(spec, sender.other)
    theirs.state = state
    theirs.receive_data(encode_frame(msgspec.msgpack.encode(message)))
    if expected is None:
        with pytest.raises(RemoteProtocolError) as info:
            theirs.next_event()
        assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    else:
        assert theirs.next_event() == message
        assert theirs.state == expected
        assert wire == encode_frame(msgspec.msgpack.encode(message))


def test_tables_have_no_transitions_out_of_terminal_states():
    for spec, _ in SPECS.values():
        assert not [key for key in spec.table if key[0] in spec.terminal]


def drive(spec, examples, script):
    """Run a two-sided conversation through real bytes; return the final states."""
    ends = {role: Channel(spec, role) for role in Role}
    for sender, event in script:
        wire = ends[sender].send(examples[event])
        receiver = ends[sender.other]
        for i in range(len(wire)):  # byte at a time, as the worst transport would
            receiver.receive_data(wire[i : i + 1])
            got = receiver.next_event()
            if i < len(wire) - 1:
                assert got is NEED_DATA
        assert got == examples[event]
    assert ends[Role.INITIATOR].state == ends[Role.RESPONDER].state
    return ends


I, R = Role.INITIATOR, Role.RESPONDER  # noqa: E741


def test_node_control_conversation():
    _, examples = SPECS["node_control"]
    ends = drive(
        NODE_CONTROL,
        examples,
        [
            (I, "handshake"),
            (R, "handshake_accepted"),
            (I, "ping"),
            (R, "pong"),
            (R, "capability_request"),
            (I, "capability_response"),
            (R, "ping"),
            (I, "pong"),
        ],
    )
    assert ends[I].state.value == "established"
    # Either side may finish an established control stream.
    ends[I].send_finish()
    ends[R].receive_data(b"")
    assert ends[R].next_event() is EOF


def test_refused_handshake_closes_the_channel():
    _, examples = SPECS["node_control"]
    ends = drive(NODE_CONTROL, examples, [(I, "handshake"), (R, "handshake_refused")])
    assert ends[I].closed
    with pytest.raises(LocalProtocolError):
        ends[I].send(examples["ping"])


def test_http_proxy_full_exchange_and_early_response():
    _, examples = SPECS["http_proxy"]
    ends = drive(
        HTTP_PROXY,
        examples,
        [
            (I, "request_head"),
            (I, "body"),
            (R, "response_head"),
            (I, "body"),
            (I, "end"),
            (R, "body"),
            (R, "body"),
            (R, "end"),
        ],
    )
    assert ends[I].closed


def test_http_proxy_eof_before_end_is_truncation():
    """A peer that dies mid-stream must never look like a clean end (spec §7.3)."""
    _, examples = SPECS["http_proxy"]
    ends = drive(
        HTTP_PROXY, examples, [(I, "request_head"), (I, "end"), (R, "response_head"), (R, "body")]
    )
    ends[I].receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        ends[I].next_event()
    assert info.value.code is ErrorCode.TRUNCATED


def test_http_proxy_requester_cancels():
    _, examples = SPECS["http_proxy"]
    ends = drive(
        HTTP_PROXY, examples, [(I, "request_head"), (I, "end"), (R, "response_head"), (I, "error")]
    )
    assert ends[R].closed


def test_relay_control_request_response_pairs_and_refusal():
    _, examples = SPECS["relay_control"]
    ends = drive(
        RELAY_CONTROL,
        examples,
        [
            (I, "domain_request"),
            (R, "domain_response"),
            (I, "dns_challenge"),
            (R, "dns_challenge_response"),
            (I, "activate_domain"),
            (R, "error"),
            (I, "activate_domain"),
            (R, "activation_response"),
        ],
    )
    assert ends[I].state.value == "idle"


def test_nothing_after_finishing_our_side():
    _, examples = SPECS["http_proxy"]
    ends = drive(HTTP_PROXY, examples, [(I, "request_head"), (I, "end")])
    ends[I].send_finish()
    with pytest.raises(LocalProtocolError) as info:
        ends[I].send(examples["error"])
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_cannot_finish_mid_request():
    _, examples = SPECS["http_proxy"]
    ends = drive(HTTP_PROXY, examples, [(I, "request_head")])
    with pytest.raises(LocalProtocolError):
        ends[I].send_finish()


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa4type\xa4nope"])
def test_undecodable_frames_are_invalid_messages(payload):
    channel = Channel(HTTP_PROXY, Role.RESPONDER)
    channel.receive_data(encode_frame(payload))
    with pytest.raises(RemoteProtocolError) as info:
        channel.next_event()
    assert info.value.code is ErrorCode.INVALID_MESSAGE
    assert channel.state == HTTP_PROXY.initial


@given(st.binary(max_size=300))
def test_garbage_into_a_channel_raises_only_remote_errors(garbage):
    for spec, _ in SPECS.values():
        channel = Channel(spec, Role.RESPONDER, max_frame_size=128)
        try:
            channel.receive_data(garbage)
            channel.receive_data(b"")
            while channel.next_event() is not EOF:
                pass
        except RemoteProtocolError:
            pass


@pytest.mark.parametrize(
    ("offered", "supported", "expected"),
    [([1], (1,), 1), ([1, 2, 3], (2, 1), 2), ([3], (1, 2), None), ([], (1,), None)],
)
def test_negotiate_version(offered, supported, expected):
    assert negotiate_version(offered, supported) == expected


def test_oversized_send_leaves_the_state_unchanged():
    channel = Channel(HTTP_PROXY, Role.INITIATOR, max_frame_size=64)
    channel.send(HTTP_FRAMES["request_head"].__class__(method="GET", target="/"))
    before = channel.state
    with pytest.raises(LocalProtocolError) as info:
        channel.send(Body(data=b"x" * 100))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert channel.state == before
    channel.send(Body(data=b"x" * 10))  # a chunk that fits is still allowed


def test_invalid_utf8_is_an_invalid_message():
    channel = Channel(HTTP_PROXY, Role.RESPONDER)
    channel.receive_data(encode_frame(bytes.fromhex("81a474797065a3656eff")))
    with pytest.raises(RemoteProtocolError) as info:
        channel.next_event()
    assert info.value.code is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("spec", [NODE_CONTROL, RELAY_CONTROL])
def test_bare_rejection_frame_reports_the_peers_code(spec):
    """spec §3.5: a stream rejected at its preamble gets one bare error object."""
    channel = Channel(spec, Role.INITIATOR)
    rejection = StreamError(code=ErrorCode.UNSUPPORTED_VERSION, message="speaks 2 only")
    channel.receive_data(encode_frame(msgspec.msgpack.encode(rejection)))
    with pytest.raises(RemoteProtocolError, match="speaks 2 only") as info:
        channel.next_event()
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_unknown_error_codes_still_decode():
    """spec §9: codes may be added; an older node keeps the number."""
    channel = Channel(HTTP_PROXY, Role.INITIATOR)
    channel.send(HTTP_FRAMES["request_head"])
    channel.receive_data(encode_frame(msgspec.msgpack.encode({"type": "error", "code": 777})))
    event = channel.next_event()
    assert isinstance(event, StreamError) and event.code == 777
    assert channel.closed


def test_frames_crossing_our_cancel_in_flight_are_dropped():
    """The requester cancels while body chunks are already on their way back."""
    _, examples = SPECS["http_proxy"]
    ends = drive(HTTP_PROXY, examples, [(I, "request_head"), (I, "end"), (R, "response_head")])
    in_flight = ends[R].send(examples["body"]) + ends[R].send(examples["body"])
    ends[I].send(examples["error"])  # cancel, before those bytes arrive
    ends[I].receive_data(in_flight)
    assert ends[I].next_event() is NEED_DATA
    ends[I].receive_data(b"")
    assert ends[I].next_event() is EOF
