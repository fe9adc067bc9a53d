"""The bytes of the Gate protocol, without IO: preamble, frames, messages, state tables.

Written from spec/protocol.md alone; section numbers below are that document's.
Messages are plain dicts as msgpack gives them; `check_*` raise WireError with the
code to send (§9) when one breaks the spec.
"""

from __future__ import annotations

import base64
import struct

import msgpack

# §9 error codes (only the ones this node sends or names).
MALFORMED_PREAMBLE, UNSUPPORTED_VERSION, UNKNOWN_STREAM_TYPE = 100, 101, 102
FRAME_TOO_LARGE, TRUNCATED, STREAM_TYPE_NOT_SERVED = 103, 105, 106
INVALID_MESSAGE, UNEXPECTED_MESSAGE = 200, 201
UNAUTHORIZED, NOT_FOUND, UNAVAILABLE, TIMEOUT, CANCELLED, INTERNAL = 300, 400, 401, 402, 403, 500

# §3.3 stream type codes.
NODE_CONTROL, RELAY_CONTROL, HTTP_PROXY, TLS_PROXY = 1, 2, 3, 4
VERSION = 1  # §3.2: the only major version this node speaks
MAGIC = b"GATE"
MAX_FRAME = 1024 * 1024  # §3.4
U63 = 2**63 - 1


class WireError(Exception):
    """The peer (or this node) broke the protocol; `code` is what §9 says to send."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- §2.1 NodeId ---------------------------------------------------------------------


def node_id_text(key: bytes) -> str:
    """The canonical text of a 32-byte key: base32, lower case, no padding."""
    return base64.b32encode(key).decode().lower().rstrip("=")


def is_node_id(text: object) -> bool:
    """52 base32 characters whose last one is `a` or `q` (its 4 unused bits zero)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return (
        isinstance(text, str)
        and len(text) == 52
        and all(c in alphabet for c in text)
        and text[-1] in "aq"
    )


# --- §3.1-§3.3 preamble ----------------------------------------------------------------


def preamble(stream_type: int) -> bytes:
    return MAGIC + bytes([VERSION, 0, stream_type, 0])


class PreambleReader:
    """Feed bytes as they arrive; `stream_type` is set once all 8 are in and valid."""

    def __init__(self, served: set[int]) -> None:
        self.served = served
        self.buffer = b""
        self.stream_type: int | None = None

    def feed(self, data: bytes) -> bytes:
        """Take what belongs to the preamble; return the rest (the body's first bytes)."""
        if not data:  # §3.1: the stream ended before 8 bytes
            raise WireError(TRUNCATED, "stream ended inside the preamble")
        take = 8 - len(self.buffer)
        self.buffer, rest = self.buffer + data[:take], data[take:]
        for i, byte in enumerate(self.buffer[:4]):  # §3.1: byte by byte, at once
            if byte != MAGIC[i]:
                raise WireError(MALFORMED_PREAMBLE, "the stream does not start with GATE")
        if len(self.buffer) < 8:
            return b""
        # §3.2: minor version (byte 5) and reserved (byte 7) are ignored.
        if self.buffer[4] != VERSION:
            raise WireError(UNSUPPORTED_VERSION, f"version {self.buffer[4]} is not spoken")
        kind = self.buffer[6]
        if kind not in (NODE_CONTROL, RELAY_CONTROL, HTTP_PROXY, TLS_PROXY):
            raise WireError(UNKNOWN_STREAM_TYPE, f"unknown stream type {kind}")
        if kind not in self.served:  # §3.3: known, not served here
            raise WireError(STREAM_TYPE_NOT_SERVED, f"stream type {kind} is not served here")
        self.stream_type = kind
        return rest


# --- §3.4 frames -------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise WireError(INTERNAL, "refusing to send a frame over 1 MiB")
    return struct.pack(">I", len(payload)) + payload


class FrameReader:
    """Bytes in, whole payloads out; b"" to feed means the peer finished."""

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self.max_size = max_size
        self.buffer = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> None:
        if data:
            self.buffer += data
        else:
            self.ended = True

    def next(self) -> bytes | None:
        """A payload, or None: more data needed (or a clean end, see `at_end`)."""
        if len(self.buffer) >= 4:
            (length,) = struct.unpack(">I", self.buffer[:4])
            if length > self.max_size:  # §3.4: from the header alone
                raise WireError(FRAME_TOO_LARGE, f"frame of {length} bytes")
            if len(self.buffer) >= 4 + length:
                payload = bytes(self.buffer[4 : 4 + length])
                del self.buffer[: 4 + length]
                return payload
        if self.ended and self.buffer:  # §3.4: ended inside a frame
            raise WireError(TRUNCATED, "stream ended inside a frame")
        return None

    @property
    def at_end(self) -> bool:
        return self.ended and not self.buffer


# --- §4 messages -----------------------------------------------------------------------


def encode(message: dict) -> bytes:
    """§4.1: a map with string keys; `type` first when there is one (the reference's
    order, not required of senders). use_bin_type keeps bytes as msgpack bin."""
    return msgpack.packb(message, use_bin_type=True)


def decode(payload: bytes) -> dict:
    """§4.1/§4.2: exactly one msgpack map, str as valid UTF-8, bin as bytes."""
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # not msgpack, trailing bytes, bad UTF-8, ext types
        raise WireError(INVALID_MESSAGE, f"not one msgpack value: {exc}") from None
    if not isinstance(value, dict):
        raise WireError(INVALID_MESSAGE, "a message is a map")
    return value


def _invalid(why: str) -> WireError:
    return WireError(INVALID_MESSAGE, why)


def _int(value: object, low: int = 0, high: int = U63) -> bool:
    # §4.1: a bool is not an int, a float is not accepted.
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _field(m: dict, name: str, ok, required: bool, default: object = None) -> object:
    """One field: absent or nil in an optional field is its default (§4.1)."""
    value = m.get(name)
    if value is None:
        if required:
            raise _invalid(f"missing {name}")
        return default
    if not ok(value):
        raise _invalid(f"bad {name}: {value!r}")
    return value


def _str(v: object) -> bool:
    return isinstance(v, str)


def _headers(v: object) -> bool:  # §7.1: [[str, str]]
    return isinstance(v, list) and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in v
    )


def _capabilities(v: object) -> bool:  # §5.3
    if not isinstance(v, dict) or not is_node_id(v.get("node_id")):
        return False
    models = v.get("supported_models") or []
    load = v.get("load_factor", 0.0)
    return (
        isinstance(models, list)
        and all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in models)
        and all(m.get("provider") is None or isinstance(m["provider"], str) for m in models)
        and all(m.get("context_length") is None or _int(m["context_length"]) for m in models)
        and _int(v.get("max_context_length", 0))
        and isinstance(v.get("supports_streaming", True), bool)
        and isinstance(load, (int, float))
        and not isinstance(load, bool)
        and 0.0 <= load <= 1.0  # NaN fails both comparisons
    )


def check_error(m: dict) -> None:  # the error payload, StreamError, the bare error (§3.5)
    _field(m, "code", lambda v: _int(v, 0, 65535), True)  # §9: any code in 0...65535
    _field(m, "message", _str, False, "")


def check_node_message(m: dict) -> str:
    """§5.1: validate a NodeMessage; return its state-table event (§5.2)."""
    _field(m, "version", lambda v: _int(v, 1, 255), True)
    _field(m, "id", _int, True)
    _field(m, "timestamp", _int, True)
    _field(m, "reply_to", _int, False)
    p = _field(m, "payload", lambda v: isinstance(v, dict), True)
    assert isinstance(p, dict)
    tag = p.get("type")
    if tag == "handshake":
        _field(p, "node_id", is_node_id, True)
        # §5.1: at least one version.
        _field(
            p,
            "versions",
            lambda v: isinstance(v, list) and v and all(_int(x, 1, 255) for x in v),
            True,
        )
        _field(p, "agent", _str, False)
        _field(p, "capabilities", _capabilities, False)
    elif tag == "handshake_response":
        _field(p, "node_id", is_node_id, True)
        accepted = _field(p, "accepted", lambda v: isinstance(v, bool), True)
        # §5.1: an accepted response carries its version.
        _field(p, "version", lambda v: _int(v, 1, 255), bool(accepted))
        _field(p, "reason", _str, False)
        _field(p, "capabilities", _capabilities, False)
        return "handshake_accepted" if accepted else "handshake_refused"
    elif tag == "capability_response":
        _field(p, "capabilities", _capabilities, True)
    elif tag in ("ping", "pong"):
        _field(p, "nonce", _int, True)
    elif tag == "error":
        check_error(p)
    elif tag != "capability_request":
        raise _invalid(f"unknown payload type {tag!r}")
    return str(tag)


def check_http_frame(m: dict) -> str:
    """§7.1: validate an HttpFrame; return its tag."""
    tag = m.get("type")
    if tag == "request_head":
        _field(m, "method", lambda v: isinstance(v, str) and 1 <= len(v) <= 32, True)
        _field(m, "target", lambda v: isinstance(v, str) and len(v) >= 1, True)
        _field(m, "headers", _headers, False)
    elif tag == "response_head":
        _field(m, "status", lambda v: _int(v, 100, 599), True)
        _field(m, "headers", _headers, False)
    elif tag == "body":
        _field(m, "data", lambda v: isinstance(v, bytes), True)
    elif tag == "error":
        check_error(m)
    elif tag != "end":
        raise _invalid(f"unknown frame type {tag!r}")
    return str(tag)


# --- §5.2 and §7.2 state tables ----------------------------------------------------------


class NodeControlState:
    """§5.2. `sender` is "initiator" or "responder"; raises UNEXPECTED_MESSAGE."""

    def __init__(self) -> None:
        self.state = "await_handshake"

    def apply(self, sender: str, event: str) -> None:
        s = self.state
        if event == "error" and s != "closed":
            self.state = "closed"
        elif s == "await_handshake" and sender == "initiator" and event == "handshake":
            self.state = "await_response"
        elif s == "await_response" and sender == "responder" and event == "handshake_accepted":
            self.state = "established"
        elif s == "await_response" and sender == "responder" and event == "handshake_refused":
            self.state = "closed"
        elif s == "established" and event in (
            "ping",
            "pong",
            "capability_request",
            "capability_response",
        ):
            pass
        else:
            raise WireError(UNEXPECTED_MESSAGE, f"{sender} may not send {event} in {s}")

    def may_finish(self) -> bool:  # either role, §5.2
        return self.state in ("established", "closed")


class HttpProxyState:
    """§7.2: the request half (initiator's) and the response half (responder's)."""

    def __init__(self) -> None:
        self.request = self.response = "head"

    def apply(self, sender: str, event: str) -> None:
        failed = self.request == "failed"
        if event == "error" and not failed and self.response != "done":  # rule 3
            self.request = self.response = "failed"
            return
        half = "request" if sender == "initiator" else "response"
        now = getattr(self, half)
        opening = "request_head" if half == "request" else "response_head"
        if now == "head" and event == opening and (half == "request" or self.request != "head"):
            setattr(self, half, "body")  # rule 2: a response only after the request head
        elif now == "body" and event in ("body", "end"):
            setattr(self, half, "body" if event == "body" else "done")
        else:
            raise WireError(UNEXPECTED_MESSAGE, f"{sender} may not send {event} now")

    def may_finish(self, sender: str) -> bool:
        if self.request == "failed":
            return True
        return (self.request if sender == "initiator" else self.response) == "done"
