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
    Channel,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    Role,
    encode_frame,
    negotiate_version,
)

from .examples import HTTP_FRAMES, NODE_PAYLOADS, RELAY_PAYLOADS, node_message, relay_message

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
    with pytest.raises(LocalProtocolError):
        ends[I].send(examples["error"])


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
