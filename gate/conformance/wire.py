"""Messages for the conformance cases, built as plain maps so that a case can send what
no correct implementation would (a missing field, a tag from another channel, bytes
after the value), and read back as plain maps so a case sees exactly what came.

Only the encoding of valid values is shared with gate.protocol: msgpack itself and the
frame header. What a frame must contain is written out here from the spec's tables.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec

from gate.identity import NodeIdentity
from gate.protocol import NodeId, encode_frame

__all__ = [
    "MIB",
    "envelope",
    "frame",
    "hexdump",
    "node_frame",
    "other_node_id",
    "packed",
    "preamble",
    "unpack",
]

MIB: Final = 1 << 20
MAGIC: Final = b"GATE"
NODE_CONTROL, RELAY_CONTROL, HTTP_PROXY, TLS_PROXY = 1, 2, 3, 4
_encoder = msgspec.msgpack.Encoder()


def preamble(stream_type: int, version: int = 1, minor: int = 0, reserved: int = 0) -> bytes:
    return MAGIC + bytes((version, minor, stream_type, reserved))


def packed(value: Any) -> bytes:
    return _encoder.encode(value)


def frame(value: Any) -> bytes:
    """One frame holding `value` (a map, or raw bytes taken as the payload itself)."""
    payload = value if isinstance(value, bytes | bytearray) else packed(value)
    return encode_frame(bytes(payload), max_frame_size=1 << 32)


_ids = iter(range(1, 1 << 62))


def envelope(payload: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A NodeMessage or RelayMessage map around `payload` (§5.1, §6.1)."""
    message: dict[str, Any] = {
        "version": 1,
        "id": next(_ids),
        "timestamp": int(time.time() * 1000),
        "payload": payload,
    }
    message.update(overrides)
    return message


def node_frame(tag: str, **fields: Any) -> bytes:
    return frame(envelope({"type": tag, **fields}))


def other_node_id() -> str:
    """A NodeId of a fresh key: some other node's, never the runner's."""
    return str(NodeId(NodeIdentity.generate().public_key_bytes))


def unpack(payload: bytes) -> Any:
    """The msgpack value of a payload; ValueError if it is not exactly one value."""
    try:
        return msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


def hexdump(data: bytes, limit: int = 96) -> str:
    """`data` in hex, cut after `limit` bytes (with the total length)."""
    if len(data) <= limit:
        return data.hex(" ") if data else "(nothing)"
    return f"{data[:limit].hex(' ')} … ({len(data)} bytes)"
