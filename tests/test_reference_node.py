"""The reference node (spec/reference) is independent of Gate, and its wire module
replays the spec's vectors as any third party's implementation would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spec.reference import wire
from tests.test_layout import imported_modules

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "spec" / "reference"
VECTORS = ROOT / "spec" / "vectors"
TYPES = {"node_control": 1, "relay_control": 2, "http_proxy": 3, "tls_proxy": 4}
CHECKS = {"node_control": wire.check_node_message, "http_proxy": wire.check_http_frame}
TABLES = {"node_control": wire.NodeControlState, "http_proxy": wire.HttpProxyState}


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_the_reference_node_imports_nothing_from_gate():
    files = sorted(REFERENCE.glob("*.py"))
    assert files
    for path in files:
        for name in imported_modules(path):
            assert name.split(".")[0] != "gate", f"{path.name} imports {name}"


def test_preamble_vectors():
    data = load("preamble.json")
    for vector in data["valid"]:
        reader = wire.PreambleReader(served=set(TYPES.values()))
        assert reader.feed(bytes.fromhex(vector["hex"])) == b""
        assert reader.stream_type == TYPES[vector["preamble"]["stream_type"]], vector["name"]
    for vector in data["invalid"]:  # one byte at a time, then the end of the stream
        reader = wire.PreambleReader(served=set(TYPES.values()))
        with pytest.raises(wire.WireError) as info:
            for byte in bytes.fromhex(vector["hex"]):
                reader.feed(bytes([byte]))
                assert reader.stream_type is None
            reader.feed(b"")
        assert info.value.code == vector["code"], vector["name"]


def test_a_known_stream_type_not_served_is_106():
    reader = wire.PreambleReader(served={1, 3})
    with pytest.raises(wire.WireError) as info:
        reader.feed(wire.preamble(2))
    assert info.value.code == wire.STREAM_TYPE_NOT_SERVED


def frames_of(vector: dict) -> list[str]:
    reader, out = wire.FrameReader(vector["max_frame_size"]), []
    for byte in bytes.fromhex(vector["hex"]):
        reader.feed(bytes([byte]))
        while (payload := reader.next()) is not None:
            out.append(payload.hex())
    reader.feed(b"")
    while (payload := reader.next()) is not None:
        out.append(payload.hex())
    assert reader.at_end
    return out


def test_frame_vectors():
    data = load("frames.json")
    for vector in data["valid"]:
        assert frames_of(vector) == vector["frames"], vector["name"]
    for vector in data["invalid"]:
        with pytest.raises(wire.WireError) as info:
            frames_of(vector)
        assert info.value.code == vector["code"], vector["name"]


@pytest.mark.parametrize("channel", sorted(CHECKS))
def test_message_vectors(channel):
    data = load(f"{channel}.json")
    for vector in data["valid"]:
        frame = bytes.fromhex(vector["hex"])
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        assert CHECKS[channel](wire.decode(frame[4:])) == vector["name"]
    for vector in data["invalid"]:
        with pytest.raises(wire.WireError) as info:
            CHECKS[channel](wire.decode(bytes.fromhex(vector["hex"])[4:]))
        assert info.value.code == vector["code"] == wire.INVALID_MESSAGE, vector["name"]


def test_sequence_vectors():
    played = 0
    for sequence in load("sequences.json")["sequences"]:
        channel = sequence["channel"]
        if channel not in TABLES:  # a node does not serve relay_control
            continue
        table, failed = TABLES[channel](), None
        for index, step in enumerate(sequence["steps"]):
            try:
                event = CHECKS[channel](wire.decode(bytes.fromhex(step["hex"])[4:]))
                table.apply(step["from"], event)
            except wire.WireError as exc:
                failed = (index, exc.code)
                break
        outcome = sequence["outcome"]
        expected = None if outcome["ok"] else (outcome["step"], outcome["code"])
        assert failed == expected, sequence["name"]
        played += 1
    assert played >= 9
