"""The stream preamble and the length-prefixed frame codec, sans-IO (spec §3).

Theory of operation
-------------------
Every Gate stream starts with an 8-byte preamble from the side that opened it:

    offset 0..3  b"GATE"                       protocol name
    offset 4     major version (u8)            1 today; see SUPPORTED_VERSIONS
    offset 5     minor version (u8)            sent as 0; ignored on receipt (§3.2)
    offset 6     stream type (u8)              STREAM_TYPE_CODES
    offset 7     reserved (u8)                 sent as 0; ignored on receipt

After it, NodeControl, RelayControl and HttpProxy streams are a sequence of frames:
a 4-byte big-endian payload length, then that many bytes of msgpack. A TlsProxy
stream has one frame (its TlsProxyHeader) and then raw bytes.

Both readers here take bytes in whatever pieces the transport delivers — one byte at
a time included — and return a result only when it is complete. Input that breaks
the rules raises RemoteProtocolError with the wire code to send back; asking to
encode something that breaks them raises LocalProtocolError.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Final

from gate.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from gate.protocol.messages import PROTOCOL_VERSION, SUPPORTED_VERSIONS, StreamType

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_HEADER_SIZE",
    "MAGIC",
    "PREAMBLE_SIZE",
    "STREAM_TYPE_CODES",
    "FrameDecoder",
    "Preamble",
    "PreambleReader",
    "Sentinel",
    "encode_frame",
    "encode_preamble",
]

MAGIC: Final = b"GATE"
PREAMBLE_SIZE: Final = 8
FRAME_HEADER_SIZE: Final = 4
#: 1 MiB: large enough for any control message and a generous body chunk, small
#: enough that a hostile peer cannot make us buffer much (spec §3.4).
DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20

#: Wire codes of stream types. Codes never change meaning; new ones may be added (§8).
STREAM_TYPE_CODES: Final[dict[StreamType, int]] = {
    StreamType.NODE_CONTROL: 1,
    StreamType.RELAY_CONTROL: 2,
    StreamType.HTTP_PROXY: 3,
    StreamType.TLS_PROXY: 4,
}
_STREAM_TYPES_BY_CODE: Final = {code: st for st, code in STREAM_TYPE_CODES.items()}
_LENGTH: Final = struct.Struct(">I")


class Sentinel(enum.Enum):
    """Results that are not data: more bytes are needed, or the peer finished cleanly."""

    NEED_DATA = "NEED_DATA"
    EOF = "EOF"


NEED_DATA: Final = Sentinel.NEED_DATA
EOF: Final = Sentinel.EOF


@dataclasses.dataclass(frozen=True, slots=True)
class Preamble:
    stream_type: StreamType
    version: int = PROTOCOL_VERSION
    minor: int = 0


def encode_preamble(stream_type: StreamType, version: int = PROTOCOL_VERSION) -> bytes:
    if not 1 <= version <= 255:  # spec §3.2: version 0 is never valid
        raise LocalProtocolError(f"version {version} is not in 1..255")
    return MAGIC + bytes((version, 0, STREAM_TYPE_CODES[stream_type], 0))


class PreambleReader:
    """Reads the preamble off the front of a stream; leftover bytes go to the next reader."""

    def __init__(self, supported_versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> None:
        self._buf = bytearray()
        self._supported = supported_versions
        self._result: Preamble | None = None

    def receive_data(self, data: bytes) -> Preamble | Sentinel:
        """Feed bytes; returns the Preamble once all 8 bytes are in, else NEED_DATA.

        b"" means the peer finished sending: before a full preamble that is an error.
        """
        if self._result is not None:
            raise LocalProtocolError("preamble already read; take trailing_data")
        if not data:
            raise RemoteProtocolError(
                f"stream ended after {len(self._buf)} of {PREAMBLE_SIZE} preamble bytes",
                ErrorCode.TRUNCATED,
            )
        self._buf += data
        # spec §3.1: reject a wrong name as soon as one byte disagrees, not after 8.
        head = bytes(self._buf[: len(MAGIC)])
        if not MAGIC.startswith(head):
            raise RemoteProtocolError(
                f"not a Gate stream: preamble starts {head!r}, expected {MAGIC!r}",
                ErrorCode.MALFORMED_PREAMBLE,
            )
        if len(self._buf) < PREAMBLE_SIZE:
            return NEED_DATA
        version, minor, code = self._buf[4], self._buf[5], self._buf[6]
        if version not in self._supported:  # spec §3.2 MUST
            raise RemoteProtocolError(
                f"unsupported protocol version {version} (this node speaks "
                f"{', '.join(map(str, self._supported))})",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        stream_type = _STREAM_TYPES_BY_CODE.get(code)
        if stream_type is None:  # spec §3.3 MUST
            raise RemoteProtocolError(f"unknown stream type {code}", ErrorCode.UNKNOWN_STREAM_TYPE)
        self._result = Preamble(stream_type, version, minor)
        return self._result

    @property
    def trailing_data(self) -> bytes:
        """Bytes that arrived after the preamble: the start of the stream's frames."""
        return bytes(self._buf[PREAMBLE_SIZE:])


def encode_frame(payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    if len(payload) > max_frame_size:
        raise LocalProtocolError(
            f"frame of {len(payload)} bytes exceeds the maximum of {max_frame_size}",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frame payloads.

    receive_data(b"") marks the end of the stream; next_frame() then returns EOF if the
    end fell between frames, and raises TRUNCATED if it fell inside one.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0  # start of unread data: consuming is O(1), compaction amortized
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True  # repeating the end is harmless
        elif self._eof:
            raise LocalProtocolError("data received after end of stream")
        else:
            self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | Sentinel:
        available = len(self._buf) - self._pos
        if available >= FRAME_HEADER_SIZE:
            (length,) = _LENGTH.unpack_from(self._buf, self._pos)
            if length > self.max_frame_size:  # spec §3.4 MUST: checked before buffering it
                raise RemoteProtocolError(
                    f"frame of {length} bytes exceeds the maximum of {self.max_frame_size}",
                    ErrorCode.FRAME_TOO_LARGE,
                )
            end = self._pos + FRAME_HEADER_SIZE + length
            if len(self._buf) >= end:
                payload = bytes(self._buf[self._pos + FRAME_HEADER_SIZE : end])
                self._pos = end
                self._compact()
                return payload
        if self._eof:
            if available:
                raise RemoteProtocolError(
                    f"stream ended inside a frame ({available} bytes unread)",
                    ErrorCode.TRUNCATED,
                )
            return EOF
        return NEED_DATA

    def take_remaining(self) -> bytes:
        """Every byte received and not yet returned as a frame, now the caller's: for a
        stream whose framed part ends early (tls_proxy: one header frame, then raw bytes,
        spec §3.4, §7.4)."""
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest

    def _compact(self) -> None:
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
