"""Writes spec/schema/*.json and spec/vectors/*.json from the reference implementation.

Run `make spec` (``python -m spec.generate`` from the repository root) after changing a
message. The test suite fails when the committed schema differs from the structs, and
replays every vector, so a change that alters the wire shows up as a diff to these
files that a reviewer has to accept. The messages in the vectors are spec/examples.py's,
which the protocol tests use too.
"""

from __future__ import annotations

import json
import pathlib
import sys

import msgspec

import gate

SPEC = pathlib.Path(__file__).resolve().parent
# Run as a script, `spec` is not importable and the gate imported is whichever is
# installed, perhaps another checkout's: the vectors must come from the code beside them.
if not __package__ or pathlib.Path(gate.__file__).resolve().parent.parent != SPEC.parent:
    sys.exit(f"run `python -m spec.generate` in {SPEC.parent} (or `make spec`)")

from gate.protocol import (  # noqa: E402
    HTTP_PROXY,
    NODE_CONTROL,
    RELAY_CONTROL,
    Channel,
    ErrorCode,
    ProtocolError,
    Role,
    StreamType,
    encode_frame,
    encode_preamble,
)
from gate.protocol.schema import render_schemas  # noqa: E402
from spec.examples import (  # noqa: E402
    HTTP_FRAMES,
    NODE_PAYLOADS,
    RELAY_PAYLOADS,
    REPLIES,
    node_message,
    relay_message,
)

_encode = msgspec.msgpack.Encoder().encode


def frame_hex(message: object) -> str:
    return encode_frame(_encode(message)).hex()


def message_vectors(name: str, type_name: str, messages: dict[str, object]) -> dict:
    return {
        "description": (
            f"{name}: each `hex` is one frame (4-byte big-endian length + msgpack) that "
            f"decodes to `message` ({type_name}, shown as JSON; bytes as base64), and "
            "that an encoder with the same field order produces byte for byte."
        ),
        "valid": [
            {
                "name": event,
                "hex": frame_hex(message),
                "message": json.loads(msgspec.json.encode(message)),
            }
            for event, message in messages.items()
        ],
    }


def invalid(name: str, payload: bytes, code: ErrorCode) -> dict:
    return {"name": name, "hex": encode_frame(payload).hex(), "error": code.name, "code": int(code)}


def preamble_vectors() -> dict:
    valid = [
        {
            "name": st.value,
            "hex": encode_preamble(st).hex(),
            "preamble": {"version": 1, "minor": 0, "stream_type": st.value},
        }
        for st in StreamType
    ]
    valid.append(
        {
            "name": "minor version and reserved byte are ignored",
            "hex": b"GATE\x01\x07\x03\xff".hex(),
            "preamble": {"version": 1, "minor": 7, "stream_type": "http_proxy"},
        }
    )
    bad = [
        ("wrong magic", b"HTTP/1.1", ErrorCode.MALFORMED_PREAMBLE),
        ("TLS ClientHello", bytes.fromhex("160301020001"), ErrorCode.MALFORMED_PREAMBLE),
        ("version 2", b"GATE\x02\x00\x01\x00", ErrorCode.UNSUPPORTED_VERSION),
        ("version 0", b"GATE\x00\x00\x01\x00", ErrorCode.UNSUPPORTED_VERSION),
        ("stream type 0", b"GATE\x01\x00\x00\x00", ErrorCode.UNKNOWN_STREAM_TYPE),
        ("stream type 200", b"GATE\x01\x00\xc8\x00", ErrorCode.UNKNOWN_STREAM_TYPE),
        ("ends after 5 bytes", b"GATE\x01", ErrorCode.TRUNCATED),
    ]
    return {
        "description": (
            "Stream preambles (spec §3). Feed `hex`, then end the stream. Either the preamble "
            "is read as `preamble`, or the reader fails with `error` (wire `code`)."
        ),
        "valid": valid,
        "invalid": [
            {"name": n, "hex": d.hex(), "error": c.name, "code": int(c)} for n, d, c in bad
        ],
    }


def frame_vectors() -> dict:
    return {
        "description": (
            "Frame codec (spec §3.4). Feed `hex` (in any split), then end the stream, with the "
            "given `max_frame_size`. Either exactly `frames` (payloads, hex) come out, or "
            "the decoder fails with `error`."
        ),
        "valid": [
            {"name": "empty stream", "max_frame_size": 1 << 20, "hex": "", "frames": []},
            {
                "name": "three frames",
                "max_frame_size": 1 << 20,
                "hex": (encode_frame(b"a") + encode_frame(b"") + encode_frame(b"xyz")).hex(),
                "frames": ["61", "", "78797a"],
            },
            {
                "name": "exactly the maximum",
                "max_frame_size": 16,
                "hex": encode_frame(b"\x00" * 16, 16).hex(),
                "frames": ["00" * 16],
            },
        ],
        "invalid": [
            {
                "name": "one byte over the maximum",
                "max_frame_size": 16,
                "hex": "00000011",
                "error": "FRAME_TOO_LARGE",
                "code": int(ErrorCode.FRAME_TOO_LARGE),
            },
            {
                "name": "ends inside a header",
                "max_frame_size": 1 << 20,
                "hex": "0000",
                "error": "TRUNCATED",
                "code": int(ErrorCode.TRUNCATED),
            },
            {
                "name": "ends inside a payload",
                "max_frame_size": 1 << 20,
                "hex": "0000000561",
                "error": "TRUNCATED",
                "code": int(ErrorCode.TRUNCATED),
            },
        ],
    }


def sequence(spec, role: Role, steps, examples) -> dict:
    """Run a conversation through a reference channel and record what it said."""
    channel = Channel(spec, role)
    out = []
    outcome: dict = {"ok": True}
    for index, (sender, event) in enumerate(steps):
        message = examples[event]
        out.append({"from": sender.value, "event": event, "hex": frame_hex(message)})
        try:
            if sender is role:
                channel.send(message)
            else:
                channel.receive_data(encode_frame(_encode(message)))
                channel.next_event()
        except ProtocolError as exc:
            outcome = {"ok": False, "step": index, "error": exc.code.name, "code": int(exc.code)}
            break
    return {"channel": spec.name, "role": role.value, "steps": out, "outcome": outcome}


def sequence_vectors() -> dict:
    i, r = Role.INITIATOR, Role.RESPONDER
    node = {k: node_message(v) for k, v in NODE_PAYLOADS.items()}
    relay = {k: relay_message(v) for k, v in RELAY_PAYLOADS.items()}
    cases = [
        (
            "handshake then heartbeat",
            NODE_CONTROL,
            r,
            node,
            [(i, "handshake"), (r, "handshake_accepted"), (i, "ping"), (r, "pong")],
        ),
        ("ping before handshake", NODE_CONTROL, r, node, [(i, "ping")]),
        ("handshake from the responder", NODE_CONTROL, i, node, [(r, "handshake")]),
        (
            "message after a refused handshake",
            NODE_CONTROL,
            i,
            node,
            [(i, "handshake"), (r, "handshake_refused"), (r, "ping")],
        ),
        (
            "second handshake",
            NODE_CONTROL,
            r,
            node,
            [(i, "handshake"), (r, "handshake_accepted"), (i, "handshake")],
        ),
        (
            "relay requests in turn",
            RELAY_CONTROL,
            r,
            relay,
            [
                (i, "domain_request"),
                (r, "domain_response"),
                (i, "dns_challenge"),
                (r, "dns_challenge_response"),
                (i, "activate_domain"),
                (r, "activation_response"),
            ],
        ),
        (
            "two relay requests at once",
            RELAY_CONTROL,
            r,
            relay,
            [(i, "domain_request"), (i, "dns_challenge")],
        ),
        ("unsolicited relay answer", RELAY_CONTROL, i, relay, [(r, "domain_response")]),
        (
            "http exchange",
            HTTP_PROXY,
            r,
            HTTP_FRAMES,
            [
                (i, "request_head"),
                (i, "body"),
                (i, "end"),
                (r, "response_head"),
                (r, "body"),
                (r, "end"),
            ],
        ),
        ("response before request", HTTP_PROXY, i, HTTP_FRAMES, [(r, "response_head")]),
        ("body before head", HTTP_PROXY, r, HTTP_FRAMES, [(i, "body")]),
        (
            "body after end",
            HTTP_PROXY,
            i,
            HTTP_FRAMES,
            [(i, "request_head"), (i, "end"), (r, "response_head"), (r, "end"), (r, "body")],
        ),
        (
            "responder fails the request",
            HTTP_PROXY,
            i,
            HTTP_FRAMES,
            [(i, "request_head"), (i, "end"), (r, "error")],
        ),
    ]
    return {
        "description": (
            "Conversations (spec §5-§7). A receiver playing `role` is fed each step sent by "
            "the other role (and checks each step it sends itself). With outcome ok every "
            "step is accepted; otherwise step `step` fails with `error`."
        ),
        "sequences": [
            {"name": name, **sequence(spec, role, steps, ex)}
            for name, spec, role, ex, steps in cases
        ],
    }


def all_vectors() -> dict[str, dict]:
    node = {
        k: node_message(v, id=n, reply_to=n - 1 if k in REPLIES else None)
        for n, (k, v) in enumerate(NODE_PAYLOADS.items(), 1)
    }
    relay = {
        k: relay_message(v, id=n, reply_to=n - 1 if k in REPLIES else None)
        for n, (k, v) in enumerate(RELAY_PAYLOADS.items(), 1)
    }
    node_vectors = message_vectors("NodeControl", "NodeMessage", node)
    node_vectors["invalid"] = [
        invalid("not msgpack", b"\xc1", ErrorCode.INVALID_MESSAGE),
        invalid("empty payload", b"", ErrorCode.INVALID_MESSAGE),
        invalid(
            "unknown payload tag",
            _encode({"version": 1, "id": 1, "timestamp": 0, "payload": {"type": "nope"}}),
            ErrorCode.INVALID_MESSAGE,
        ),
        invalid(
            "invalid UTF-8 in a string",
            bytes.fromhex("84a776657273696f6e01a26964")
            + bytes.fromhex("01a974696d657374616d7000")
            + bytes.fromhex("a77061796c6f616481a474797065a3656eff"),
            ErrorCode.INVALID_MESSAGE,
        ),
        invalid(
            "accepted handshake_response without a version",
            _encode(
                {
                    "version": 1,
                    "id": 1,
                    "timestamp": 0,
                    "payload": {
                        "type": "handshake_response",
                        "node_id": "a" * 52,
                        "accepted": True,
                    },
                }
            ),
            ErrorCode.INVALID_MESSAGE,
        ),
        invalid(
            "handshake offering no versions",
            _encode(
                {
                    "version": 1,
                    "id": 1,
                    "timestamp": 0,
                    "payload": {"type": "handshake", "node_id": "a" * 52, "versions": []},
                }
            ),
            ErrorCode.INVALID_MESSAGE,
        ),
        invalid(
            "non-canonical node id (last character b)",
            _encode(
                {
                    "version": 1,
                    "id": 1,
                    "timestamp": 0,
                    "payload": {"type": "handshake", "node_id": "a" * 51 + "b", "versions": [1]},
                }
            ),
            ErrorCode.INVALID_MESSAGE,
        ),
        invalid(
            "load_factor above 1",
            _encode(
                {
                    "version": 1,
                    "id": 1,
                    "timestamp": 0,
                    "payload": {
                        "type": "capability_response",
                        "capabilities": {"node_id": "a" * 52, "load_factor": 2.0},
                    },
                }
            ),
            ErrorCode.INVALID_MESSAGE,
        ),
    ]
    relay_vectors = message_vectors("RelayControl", "RelayMessage", relay)
    http_vectors = message_vectors("HttpProxy", "HttpFrame", HTTP_FRAMES)
    http_vectors["invalid"] = [
        invalid(
            "status 600",
            _encode({"type": "response_head", "status": 600}),
            ErrorCode.INVALID_MESSAGE,
        ),
        invalid("body without data", _encode({"type": "body"}), ErrorCode.INVALID_MESSAGE),
    ]
    return {
        "preamble.json": preamble_vectors(),
        "frames.json": frame_vectors(),
        "node_control.json": node_vectors,
        "relay_control.json": relay_vectors,
        "http_proxy.json": http_vectors,
        "sequences.json": sequence_vectors(),
    }


def main() -> None:
    for filename, text in render_schemas().items():
        (SPEC / "schema" / filename).write_text(text)
    for filename, data in all_vectors().items():
        (SPEC / "vectors" / filename).write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {SPEC / 'schema'} and {SPEC / 'vectors'}")


if __name__ == "__main__":
    main()
