"""Replays every language-neutral vector in spec/vectors/ against this implementation."""

import json
import pathlib

import msgspec
import pytest

from gate.protocol import (
    EOF,
    HTTP_PROXY,
    NEED_DATA,
    NODE_CONTROL,
    RELAY_CONTROL,
    Channel,
    ClientHelloReader,
    ErrorCode,
    FrameDecoder,
    HttpFrame,
    NodeMessage,
    PreambleReader,
    ProtocolError,
    RelayMessage,
    RemoteProtocolError,
    Role,
    SniError,
)
from gate.protocol.framing import FRAME_HEADER_SIZE

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "spec" / "vectors"
MESSAGE_FILES = {
    "node_control.json": NodeMessage,
    "relay_control.json": RelayMessage,
    "http_proxy.json": HttpFrame,
}
CHANNELS = {spec.name: spec for spec in (NODE_CONTROL, RELAY_CONTROL, HTTP_PROXY)}


def load(name):
    return json.loads((VECTORS / name).read_text())


def cases(filename, key):
    return [pytest.param(v, id=v["name"]) for v in load(filename).get(key, [])]


def test_every_vector_file_is_replayed():
    expected = {
        *MESSAGE_FILES,
        "preamble.json",
        "frames.json",
        "sequences.json",
        "client_hello.json",
    }
    assert {p.name for p in VECTORS.glob("*.json")} == expected


@pytest.mark.parametrize("filename", sorted(MESSAGE_FILES))
def test_message_vectors(filename):
    type_ = MESSAGE_FILES[filename]
    data = load(filename)
    assert data["valid"]
    for vector in data["valid"]:
        wire = bytes.fromhex(vector["hex"])
        length = int.from_bytes(wire[:FRAME_HEADER_SIZE], "big")
        payload = wire[FRAME_HEADER_SIZE:]
        assert length == len(payload), vector["name"]
        decoded = msgspec.msgpack.decode(payload, type=type_)
        assert json.loads(msgspec.json.encode(decoded)) == vector["message"], vector["name"]
        # And the other way: the JSON form encodes to exactly these bytes.
        from_json = msgspec.json.decode(json.dumps(vector["message"]), type=type_)
        assert msgspec.msgpack.encode(from_json) == payload, vector["name"]
    spec = {NodeMessage: NODE_CONTROL, RelayMessage: RELAY_CONTROL, HttpFrame: HTTP_PROXY}[type_]
    for vector in data.get("invalid", []):
        channel = Channel(spec, Role.RESPONDER)
        channel.receive_data(bytes.fromhex(vector["hex"]))
        with pytest.raises(RemoteProtocolError) as info:
            channel.next_event()
        assert info.value.code == vector["code"] == ErrorCode.INVALID_MESSAGE, vector["name"]


@pytest.mark.parametrize("vector", cases("preamble.json", "valid"))
def test_preamble_valid(vector):
    preamble = PreambleReader().receive_data(bytes.fromhex(vector["hex"]))
    expected = vector["preamble"]
    assert (preamble.version, preamble.minor, preamble.stream_type.value) == (
        expected["version"],
        expected["minor"],
        expected["stream_type"],
    )


@pytest.mark.parametrize("vector", cases("preamble.json", "invalid"))
def test_preamble_invalid(vector):
    reader = PreambleReader()
    with pytest.raises(RemoteProtocolError) as info:
        for i, byte in enumerate(bytes.fromhex(vector["hex"])):  # byte at a time
            if reader.receive_data(bytes([byte])) is not NEED_DATA:
                pytest.fail(f"accepted after {i + 1} bytes")
        reader.receive_data(b"")
    assert info.value.code == vector["code"]
    assert info.value.code.name == vector["error"]


@pytest.mark.parametrize("vector", cases("frames.json", "valid") + cases("frames.json", "invalid"))
def test_frames(vector):
    decoder = FrameDecoder(vector["max_frame_size"])
    frames = []

    def run():
        for byte in bytes.fromhex(vector["hex"]):
            decoder.receive_data(bytes([byte]))
            while (frame := decoder.next_frame()) is not NEED_DATA:
                frames.append(frame.hex())
        decoder.receive_data(b"")
        while (frame := decoder.next_frame()) is not EOF:
            frames.append(frame.hex())

    if "error" in vector:
        with pytest.raises(RemoteProtocolError) as info:
            run()
        assert info.value.code == vector["code"]
    else:
        run()
        assert frames == vector["frames"]


@pytest.mark.parametrize("vector", cases("sequences.json", "sequences"))
def test_sequences(vector):
    role = Role(vector["role"])
    channel = Channel(CHANNELS[vector["channel"]], role)
    outcome = vector["outcome"]
    for index, step in enumerate(vector["steps"]):
        wire = bytes.fromhex(step["hex"])
        failing = not outcome["ok"] and index == outcome["step"]
        try:
            if Role(step["from"]) is role:
                decoded = msgspec.msgpack.decode(
                    wire[FRAME_HEADER_SIZE:], type=channel.spec.message_type
                )
                assert channel.send(decoded) == wire
            else:
                channel.receive_data(wire)
                assert channel.next_event() is not NEED_DATA
        except ProtocolError as exc:
            assert failing, f"step {index} failed unexpectedly: {exc!r}"
            assert exc.code == outcome["code"]
            return
        assert not failing, f"step {index} was accepted but should fail with {outcome['error']}"
    assert outcome["ok"]


HELLOS = load("client_hello.json")


@pytest.mark.parametrize(
    "vector", cases("client_hello.json", "captured") + cases("client_hello.json", "valid")
)
def test_client_hello_valid(vector):
    wire = bytes.fromhex(vector["hex"])
    assert ClientHelloReader(HELLOS["max_size"]).feed(wire) == vector["server_name"]
    reader = ClientHelloReader(HELLOS["max_size"])  # byte at a time: the name comes last
    assert [reader.feed(wire[i : i + 1]) for i in range(len(wire))][-2:] == [
        None,
        vector["server_name"],
    ]


@pytest.mark.parametrize("vector", cases("client_hello.json", "incomplete"))
def test_client_hello_incomplete(vector):
    reader = ClientHelloReader(HELLOS["max_size"])
    wire = bytes.fromhex(vector["hex"])
    assert {reader.feed(wire[i : i + 1]) for i in range(len(wire))} == {None}


@pytest.mark.parametrize("vector", cases("client_hello.json", "invalid"))
def test_client_hello_invalid(vector):
    wire = bytes.fromhex(vector["hex"])
    with pytest.raises(SniError) as whole:
        ClientHelloReader(HELLOS["max_size"]).feed(wire)
    reader = ClientHelloReader(HELLOS["max_size"])
    with pytest.raises(SniError) as piecewise:
        for i in range(len(wire)):
            reader.feed(wire[i : i + 1])
    assert whole.value.reason == piecewise.value.reason == vector["reason"]
