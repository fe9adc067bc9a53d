"""Cases for §2.1 (NodeIds in fields), §4.1-§4.3 (encoding, invalid messages, ending a
stream), §5.1 (timestamps) and §9 (unknown codes), for both roles, on the stream type
each serves to strangers.

The table's rows are the frame sent after the preamble (`send`: bytes, or a function of
the probe and the role's first message, which it may change with `changed`) and the
answer (an error code, or ANSWERED: the message was read); first_stream runs them."""

from __future__ import annotations

import struct
from typing import Any

from gate.conformance.cases.first_message import (
    ANSWERED,
    DROP,
    STREAM,
    answered,
    changed,
    first_message,
    first_stream,
)
from gate.conformance.probe import Ended, Probe, Wire
from gate.conformance.registry import CaseFailed, Row, case, table
from gate.conformance.wire import envelope, frame, packed, preamble
from gate.protocol import ErrorCode


def wide(value: Any) -> bytes:
    """msgpack with the widest representation of everything (uint64 integers, map16,
    str16...): valid, and not what any encoder writes by default (§4.1: receivers MUST
    accept any valid representation)."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return b"\xcf" + struct.pack(">Q", value)
    if isinstance(value, str):
        raw = value.encode()
        return b"\xda" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, bytes):
        return b"\xc6" + struct.pack(">I", len(value)) + value
    if isinstance(value, list):
        return b"\xdc" + struct.pack(">H", len(value)) + b"".join(wide(v) for v in value)
    assert isinstance(value, dict)
    items = b"".join(wide(k) + wide(v) for k, v in value.items())
    return b"\xde" + struct.pack(">H", len(value)) + items


def _reversed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed(v) for k, v in reversed(list(value.items()))}
    return value


def _unused_bits(node_id: str) -> str:
    """`node_id` with its last character's unused bits set (§2.1)."""
    return node_id[:-1] + ("b" if node_id[-1] == "a" else "r")


def _bad_utf8(message: dict[str, Any]) -> bytes:
    """`message` packed with 52 bytes of invalid UTF-8 as its NodeId."""
    placeholder = "z" * 52
    raw = packed(changed(message, payload={"node_id": placeholder}))
    return raw.replace(placeholder.encode(), b"\xff\xfe" * 26)


INVALID = ErrorCode.INVALID_MESSAGE
_MISSING_QUOTE = "a missing required field; a value of the wrong type;"
# `node_id` is a NodeId field of the first message in both roles.
table(
    [
        Row(
            "4.1/1",
            "bytes after the msgpack value: INVALID_MESSAGE",
            "Each frame payload MUST be exactly one msgpack value, with no trailing bytes.",
            send=lambda _, first: frame(packed(first) + b"\xc0"),
            expect=INVALID,
        ),
        Row(
            "4.1/2",
            "accepts any key order and the widest integer, string and map encodings",
            "Receivers MUST accept any key order and any valid representation.",
            send=lambda _, first: frame(wide(_reversed(first))),
            expect=ANSWERED,
        ),
        Row(
            "4.2/1",
            "a payload that is not msgpack (c1): INVALID_MESSAGE",
            "A frame whose payload does not decode as the channel's message type MUST be "
            "treated as INVALID_MESSAGE.",
            send=frame(b"\xc1"),
            expect=INVALID,
        ),
        Row(
            "4.2/2",
            "a payload that is not a map: INVALID_MESSAGE",
            "That covers: not msgpack or trailing bytes; not a map;",
            send=frame([1, 2, 3]),
            expect=INVALID,
        ),
        Row(
            "4.2/3",
            "an unknown payload tag: INVALID_MESSAGE",
            "An unknown *tag* is not ignorable: it is INVALID_MESSAGE.",
            send=lambda _, __: frame(envelope({"type": "conformance_unknown"})),
            expect=INVALID,
        ),
        Row(
            "4.2/4",
            "a tag from another channel (request_head): INVALID_MESSAGE",
            "a missing, unknown or wrongly typed `type` tag (a tag from another channel included)",
            send=lambda _, __: frame(
                envelope({"type": "request_head", "method": "GET", "target": "/"})
            ),
            expect=INVALID,
        ),
        Row(
            "4.2/5",
            "a missing required field: INVALID_MESSAGE",
            _MISSING_QUOTE,
            send=lambda _, first: frame(changed(first, payload={"node_id": DROP})),
            expect=INVALID,
        ),
        Row(
            "4.2/6",
            "a value of the wrong type (an integer NodeId): INVALID_MESSAGE",
            _MISSING_QUOTE,
            send=lambda _, first: frame(changed(first, payload={"node_id": 7})),
            expect=INVALID,
        ),
        Row(
            "4.2/7",
            "invalid UTF-8 in a string: INVALID_MESSAGE",
            "a violated constraint (range, length, pattern); invalid UTF-8 in a string.",
            send=lambda _, first: frame(_bad_utf8(first)),
            expect=INVALID,
        ),
        Row(
            "4.2/8",
            "a missing envelope field (timestamp): INVALID_MESSAGE",
            _MISSING_QUOTE,
            send=lambda _, first: frame(changed(first, timestamp=DROP)),
            expect=INVALID,
        ),
        Row(
            "4.2/10",
            "an envelope version out of range (0): INVALID_MESSAGE",
            "a violated constraint (range, length, pattern)",
            send=lambda _, first: frame(changed(first, version=0)),
            expect=INVALID,
        ),
        Row(
            "2.1/1",
            "a NodeId whose last character is not a or q: INVALID_MESSAGE",
            "A receiver MUST reject every other spelling (in a message field: INVALID_MESSAGE)",
            send=lambda probe, first: frame(
                changed(first, payload={"node_id": _unused_bits(probe.own_id)})
            ),
            expect=INVALID,
        ),
        Row(
            "2.1/2",
            "an uppercase NodeId in a field: INVALID_MESSAGE",
            "It MUST NOT send those forms on the wire; a message field that is not "
            "`^[a-z2-7]{51}[aq]$` is INVALID_MESSAGE (§4.2).",
            send=lambda probe, first: frame(
                changed(first, payload={"node_id": probe.own_id.upper()})
            ),
            expect=INVALID,
        ),
        Row(
            "2.1/3",
            "a hex NodeId in a field: INVALID_MESSAGE",
            "A NodeId on the wire (in any message field), in a DNS name and in a TLS SNI MUST be "
            "in the canonical text form.",
            send=lambda probe, first: frame(
                changed(first, payload={"node_id": probe.stranger.node_id.bytes.hex()})
            ),
            expect=INVALID,
        ),
    ],
    first_stream,
    roles=("node", "relay"),
)
# Rows of the same case per role: what a node's and a relay's first message may carry
# differs.
_NIL_QUOTE = (
    "A receiver MUST treat an absent field as its default, and nil in an optional (`T?`) "
    "field as absent."
)
_UNKNOWN_KEYS_QUOTE = "A receiver MUST ignore map keys it does not know, at every level of nesting."
_EXTRA = {"conformance_extra": {"nested": [1, "x"]}}
table(
    [
        Row(
            "node/4.1/3",
            "treats nil in an optional field as absent",
            _NIL_QUOTE,
            send=lambda _, first: frame(
                changed(first, reply_to=None, payload={"capabilities": None})
            ),
            expect=ANSWERED,
        ),
        Row(
            "relay/4.1/3",
            "treats nil in an optional field as absent",
            _NIL_QUOTE,
            send=lambda _, first: frame(changed(first, reply_to=None)),
            expect=ANSWERED,
        ),
        Row(
            "node/4.2/9",
            "ignores unknown keys in the envelope and the payload",
            _UNKNOWN_KEYS_QUOTE,
            send=lambda probe, first: frame(
                changed(
                    first,
                    conformance_extra=b"\x00\x01",
                    payload={
                        **_EXTRA,
                        "capabilities": {
                            "node_id": probe.own_id,
                            "supported_models": [{"id": "m", "conformance_extra": 1}],
                            "conformance_extra": True,
                        },
                    },
                )
            ),
            expect=ANSWERED,
        ),
        Row(
            "relay/4.2/9",
            "ignores unknown keys in the envelope and the payload",
            _UNKNOWN_KEYS_QUOTE,
            send=lambda _, first: frame(
                changed(first, conformance_extra=b"\x00\x01", payload=_EXTRA)
            ),
            expect=ANSWERED,
        ),
        Row(
            "node/4.3/1",
            "a peer that finishes before the handshake: TRUNCATED",
            "A receiver whose peer finishes in a state that `may_finish` does not list for the "
            "peer MUST treat the stream as TRUNCATED",
            send=b"",
            finish=True,
            expect=ErrorCode.TRUNCATED,
        ),
    ],
    first_stream,
)


def _register(role: str) -> None:
    kind = STREAM[role]

    async def sent(probe: Probe, payload: bytes) -> Wire:
        return await probe.stream(preamble(kind) + frame(payload))

    @case(
        f"{role}/5.1/1",
        "accepts timestamps of 0 and 2^63-1 (no clock check)",
        "A receiver MUST NOT reject a message because of clock skew.",
    )
    async def clock_skew(probe: Probe) -> str:
        for stamp in (0, 2**63 - 1):
            wire = await sent(probe, packed(first_message(role, probe, timestamp=stamp)))
            await answered(role, wire)
        return "answered both"

    @case(
        f"{role}/9/1",
        "an error with an unknown code (499, 65535) is understood, not INVALID_MESSAGE",
        "A receiver MUST accept any integer code in 0 … 65535",
    )
    async def unknown_code(probe: Probe) -> str:
        seen = []
        for code in (499, 65535):
            # The channel is closed by it (an initiator's error): nothing may follow.
            wire = await sent(probe, packed(envelope({"type": "error", "code": code})))
            seen.append(f"{code}: {await wire.quiet()}")
        return "; ".join(seen)

    if role == "relay":

        @case(
            "relay/4.3/1",
            "a node that finishes in idle: the relay ends its side too, without error",
            "Each channel lists `may_finish`, the (state, sender) pairs in which that sender may "
            "finish",
        )
        async def finish_idle(probe: Probe) -> str:
            wire = await probe.stream(preamble(kind))
            await wire.finish()
            value = await wire.value()
            if not isinstance(value, Ended):
                raise CaseFailed(f"answered a clean finish with {value!r:.200}", probe.evidence)
            return f"the stream {value}"


for _role in ("node", "relay"):
    _register(_role)
