"""Every message round-trips through msgpack and JSON, and decoding is typed and strict."""

import inspect

import msgspec
import pytest

from gate.protocol import (
    Capabilities,
    Handshake,
    HttpFrame,
    ModelInfo,
    NodeId,
    NodeMessage,
    PeerInfo,
    Ping,
    RelayMessage,
    StreamType,
    messages,
    proxy,
)
from spec.examples import (
    CAPS,
    HTTP_FRAMES,
    NODE_A,
    NODE_PAYLOADS,
    OTHER_VALUES,
    RELAY_PAYLOADS,
    node_message,
    relay_message,
)

CASES = (
    [(node_message(p), NodeMessage) for p in NODE_PAYLOADS.values()]
    + [(relay_message(p), RelayMessage) for p in RELAY_PAYLOADS.values()]
    + [(f, HttpFrame) for f in HTTP_FRAMES.values()]
    + [(v, type(v)) for v in OTHER_VALUES]
)


@pytest.mark.parametrize(("value", "type_"), CASES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("codec", [msgspec.msgpack, msgspec.json])
def test_round_trip(value, type_, codec):
    assert codec.decode(codec.encode(value), type=type_) == value


def test_every_struct_has_an_example():
    """A message added without an example here would go untested: fail instead."""
    seen = {type(v) for v, _ in CASES} | {
        type(v.payload) for v, _ in CASES if hasattr(v, "payload")
    }
    seen |= {type(v.status) for v in OTHER_VALUES if isinstance(v, PeerInfo)}
    seen |= {ModelInfo, Capabilities}
    for module in (messages, proxy):
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, msgspec.Struct)
                and obj.__module__ == module.__name__
                and not name.startswith("_")
            ):
                assert obj in seen, f"{name} has no example in tests/protocol/examples.py"


def test_tags_are_explicit_strings_not_class_names():
    encoded = msgspec.json.decode(msgspec.json.encode(node_message(Ping(nonce=1))))
    assert encoded["payload"]["type"] == "ping"
    tags = [
        type(p).__struct_config__.tag
        for p in [*NODE_PAYLOADS.values(), *RELAY_PAYLOADS.values(), *HTTP_FRAMES.values()]
    ]
    assert all(isinstance(t, str) and t == t.lower() for t in tags)


def test_unknown_fields_are_ignored_for_evolution():
    """spec §8: a newer peer may add fields; an older one must still read the message."""
    raw = msgspec.json.encode(
        {
            "version": 1,
            "id": 3,
            "timestamp": 4,
            "payload": {"type": "ping", "nonce": 5, "new_field": [1, 2]},
            "also_new": True,
        }
    )
    assert msgspec.json.decode(raw, type=NodeMessage).payload == Ping(nonce=5)


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 1, "id": 1, "timestamp": 1, "payload": {"type": "nope"}},
        {"version": 0, "id": 1, "timestamp": 1, "payload": {"type": "ping", "nonce": 1}},
        {"version": 1, "id": -1, "timestamp": 1, "payload": {"type": "ping", "nonce": 1}},
        {"version": 1, "id": 1, "timestamp": 1, "payload": {"type": "ping"}},
        {"version": 1, "id": 1, "timestamp": 1},
    ],
)
def test_invalid_messages_are_rejected(bad):
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(bad), type=NodeMessage)


def test_capabilities_constraints():
    with pytest.raises(msgspec.ValidationError, match="load_factor"):
        msgspec.convert({"node_id": NODE_A, "load_factor": 1.5}, Capabilities)
    with pytest.raises(msgspec.ValidationError, match="node_id"):
        msgspec.convert({"node_id": "short"}, Capabilities)
    assert msgspec.convert({"node_id": NODE_A}, Capabilities).supported_models == []


def test_handshake_node_id_must_be_canonical_text():
    hex_form = NodeId.parse(NODE_A).hex()
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"node_id": hex_form, "versions": [1]}, Handshake)


def test_defaults_are_omitted_on_the_wire():
    assert msgspec.json.decode(msgspec.json.encode(CAPS.__class__(node_id=NODE_A))) == {
        "node_id": NODE_A
    }


def test_stream_types_are_the_four_named():
    assert {s.value for s in StreamType} == {
        "node_control",
        "relay_control",
        "http_proxy",
        "tls_proxy",
    }
