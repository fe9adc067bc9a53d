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
    DEFAULT_MAX_CLIENT_HELLO,
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
    NODE_A,
    NODE_PAYLOADS,
    RELAY_PAYLOADS,
    REPLIES,
    client_hello,
    node_message,
    relay_message,
    server_name_extension,
    tls_extension,
    tls_records,
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


CLIENT_HELLO_FILE = SPEC / "vectors" / "client_hello.json"


def client_hello_vectors() -> dict:
    """Hand-built ClientHellos; the `captured` ones (real clients' bytes) are kept from the
    committed file, since only spec/capture_client_hello.py can make them again."""
    name = f"{NODE_A}.relay.test"
    sni = server_name_extension(name.encode())
    versions = tls_extension(43, bytes.fromhex("0403040303"))  # supported_versions: 1.3, 1.2
    grease = tls_extension(0x0A0A, b"")

    def hello(*extensions: bytes, **fields) -> bytes:
        return tls_records(client_hello(list(extensions), **fields))

    def padded_to(total: int) -> bytes:
        """A ClientHello message of exactly `total` bytes, header included."""
        short = client_hello([sni, tls_extension(21, b"")])
        return client_hello([sni, tls_extension(21, bytes(total - len(short)))])

    at_max = padded_to(DEFAULT_MAX_CLIENT_HELLO)
    one_over = padded_to(DEFAULT_MAX_CLIENT_HELLO + 1)
    whole = hello(sni)
    valid = [
        ("the node's name", hello(grease, sni, versions), name),
        (
            "upper case and a trailing dot",
            hello(server_name_extension(b"A.Relay.TEST.")),
            "a.relay.test",
        ),
        ("one label", hello(server_name_extension(b"localhost")), "localhost"),
        ("across three records", tls_records(client_hello([sni]), [1, 3, 40]), name),
        ("record version 3.3", tls_records(client_hello([sni]), version=0x0303), name),
        ("TLS 1.0 ClientHello", hello(sni, legacy_version=0x0301, session_id=b""), name),
        (
            "an unknown name type is skipped",
            hello(server_name_extension((7, b"?"), name.encode())),
            name,
        ),
        (
            f"{DEFAULT_MAX_CLIENT_HELLO} bytes: the default maximum",
            tls_records(at_max, [1 << 14]),
            name,
        ),
    ]
    incomplete = [
        ("a record header only", whole[:5]),
        ("all but the last byte", whole[:-1]),
        ("the first of two records", tls_records(client_hello([sni]), [50])[:55]),
    ]
    ip_literal = ["127.0.0.1", "127.1", "0x7f000001", "1.2.3.4.", "::1", "[::1]", "[2001:db8::1]"]
    invalid_name = [
        ("an underscore", b"a_b.relay.test"),
        ("a leading hyphen", b"-a.relay.test"),
        ("an empty label", b"a..relay.test"),
        ("a dot alone", b"."),
        ("a label of 64", b"a" * 64 + b".relay.test"),
        ("254 bytes", b"a." * 126 + b"ab"),
        ("UTF-8", "é.relay.test".encode()),
        ("a NUL byte", b"a\x00.relay.test"),
        ("a space", b"a b.relay.test"),
    ]
    hello_body = client_hello([sni])
    ccs = bytes.fromhex("140303000101")
    invalid = [
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: a.relay.test\r\n\r\n", "not_tls"),
        ("an SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n", "not_tls"),
        ("a PROXY protocol line", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 443\r\n", "not_tls"),
        ("an SSLv2-style ClientHello", bytes.fromhex("802e0103010015000000100700c0"), "not_tls"),
        ("handshake type byte, then not TLS", b"\x16\x01\x00\x00\x01\x01", "not_tls"),
        ("an alert first", bytes.fromhex("15030300020228"), "not_client_hello"),
        ("change_cipher_spec first", ccs, "not_client_hello"),
        ("application data first", bytes.fromhex("170303000300aabb"), "not_client_hello"),
        ("a ServerHello", tls_records(b"\x02" + hello_body[1:]), "not_client_hello"),
        ("record version 3.0", tls_records(hello_body, version=0x0300), "malformed"),
        ("record version 3.4", tls_records(hello_body, version=0x0304), "malformed"),
        ("an empty record", bytes.fromhex("1603010000") + whole, "malformed"),
        ("a record over 2^14", bytes.fromhex("160301400101000000"), "malformed"),
        (
            "change_cipher_spec between records",
            tls_records(hello_body[:60]) + ccs + tls_records(hello_body[60:]),
            "malformed",
        ),
        (
            "bytes after the ClientHello in its record",
            tls_records(hello_body + b"\x00"),
            "malformed",
        ),
        (
            "a second record past the ClientHello",
            tls_records(hello_body[:60]) + tls_records(hello_body[60:] + b"\x00"),
            "malformed",
        ),
        ("ClientHello legacy_version 3.4", hello(sni, legacy_version=0x0304), "malformed"),
        ("a session id of 33 bytes", hello(sni, session_id=bytes(33)), "malformed"),
        ("no cipher suites", hello(sni, cipher_suites=b""), "malformed"),
        ("an odd cipher_suites length", hello(sni, cipher_suites=b"\x13\x01\x13"), "malformed"),
        ("no compression method", tls_records(_without_compression(hello_body)), "malformed"),
        (
            "extensions longer than the message",
            tls_records(_grow_extensions(hello_body, 1)),
            "malformed",
        ),
        (
            "extensions shorter than the message",
            tls_records(_grow_extensions(hello_body, -1)),
            "malformed",
        ),
        ("an extension twice", hello(sni, versions, versions), "malformed"),
        ("server_name twice", hello(sni, sni), "malformed"),
        (
            "two host names",
            hello(server_name_extension(b"a.relay.test", b"b.relay.test")),
            "malformed",
        ),
        ("an empty host name", hello(server_name_extension(b"")), "malformed"),
        ("an empty server_name extension", hello(tls_extension(0, b"")), "malformed"),
        ("an empty server_name_list", hello(tls_extension(0, b"\x00\x00")), "malformed"),
        ("a handshake of 2^24-1 bytes", tls_records(b"\x01\xff\xff\xff"), "too_large"),
        (
            f"{DEFAULT_MAX_CLIENT_HELLO + 1} bytes: one over the default maximum",
            tls_records(one_over, [1 << 14]),
            "too_large",
        ),
        ("no extensions", tls_records(client_hello(None)), "no_sni"),
        ("no server_name", hello(grease, versions), "no_sni"),
        ("only an unknown name type", hello(server_name_extension((7, b"?"))), "no_sni"),
        *(
            (f"IP literal {ip}", hello(server_name_extension(ip.encode())), "ip_literal")
            for ip in ip_literal
        ),
        *(
            (f"host name with {what}", hello(server_name_extension(raw)), "invalid_name")
            for what, raw in invalid_name
        ),
    ]
    captured = (
        json.loads(CLIENT_HELLO_FILE.read_text())["captured"] if CLIENT_HELLO_FILE.exists() else []
    )
    return {
        "description": (
            "TLS ClientHellos as a relay receives them from a client (spec §7.4): feed `hex` in "
            f"any split to a reader bounded at {DEFAULT_MAX_CLIENT_HELLO} bytes of handshake. "
            "`captured` and `valid` give `server_name` (lower case, no trailing dot); "
            "`incomplete` asks for more bytes; `invalid` is refused with `reason`."
        ),
        "max_size": DEFAULT_MAX_CLIENT_HELLO,
        "captured": captured,
        "valid": [{"name": n, "hex": h.hex(), "server_name": sn} for n, h, sn in valid],
        "incomplete": [{"name": n, "hex": h.hex()} for n, h in incomplete],
        "invalid": [{"name": n, "hex": h.hex(), "reason": r} for n, h, r in invalid],
    }


def _extensions_at(message: bytes) -> int:
    """Where the extensions length of `message` (a handshake message) starts."""
    at = 4 + 2 + 32
    at += 1 + message[at]  # session id
    at += 2 + int.from_bytes(message[at : at + 2], "big")  # cipher suites
    return at + 1 + message[at]  # compression methods


def _rebuilt(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _without_compression(message: bytes) -> bytes:
    """`message` with an empty compression_methods vector."""
    at = _extensions_at(message) - 2  # the one method, and the length before it
    return _rebuilt(message[4:at] + b"\x00" + message[at + 2 :])


def _grow_extensions(message: bytes, delta: int) -> bytes:
    """`message` with its extensions length off by `delta`."""
    at = _extensions_at(message)
    length = int.from_bytes(message[at : at + 2], "big") + delta
    return _rebuilt(message[4:at] + length.to_bytes(2, "big") + message[at + 2 :])


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
    challenge = f"_acme-challenge.{'a' * 52}.relay.example"
    relay_vectors["invalid"] = [
        invalid(
            f"dns_challenge txt_value {what}",
            _encode(
                {
                    "version": 1,
                    "id": 1,
                    "timestamp": 0,
                    "payload": {"type": "dns_challenge", "domain": challenge, "txt_value": value},
                }
            ),
            ErrorCode.INVALID_MESSAGE,
        )
        for what, value in (
            ("of 42 characters", "A" * 42),
            ("of 44 characters", "A" * 44),
            ("with base64 padding", "A" * 42 + "="),
            ("with a character outside base64url", "A" * 42 + "+"),
            ("ending in a newline", "A" * 42 + "\n"),
        )
    ]
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
        "client_hello.json": client_hello_vectors(),
    }


CASES_START = "<!-- cases: generated, do not edit -->\n"
CASES_END = "<!-- end of cases -->\n"


def conformance_doc(text: str) -> str:
    """CONFORMANCE.md's `text` with its list of conformance cases made current (the
    Markdown of `python -m gate.conformance --list --markdown`)."""
    from gate.conformance import all_cases
    from gate.conformance.report import as_markdown

    head, _, rest = text.partition(CASES_START)
    _, _, tail = rest.partition(CASES_END)
    return head + CASES_START + "\n" + as_markdown(all_cases()) + "\n" + CASES_END + tail


def main() -> None:
    for filename, text in render_schemas().items():
        (SPEC / "schema" / filename).write_text(text)
    for filename, data in all_vectors().items():
        (SPEC / "vectors" / filename).write_text(json.dumps(data, indent=2) + "\n")
    doc = SPEC / "CONFORMANCE.md"
    doc.write_text(conformance_doc(doc.read_text()))
    print(f"wrote {SPEC / 'schema'}, {SPEC / 'vectors'} and the case list in {doc}")


if __name__ == "__main__":
    main()
