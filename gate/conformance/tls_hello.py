"""TLS ClientHellos for the TlsProxy cases (§7.4), built byte by byte from RFC 8446
§4.1.2 and RFC 6066 §3: what a browser sends a relay first. Only the relay reads them
(up to the server name), so they need not lead to a working TLS session."""

from __future__ import annotations

import os
import struct

__all__ = ["client_hello", "records"]

_CIPHERS = (0x1301, 0x1302, 0x1303, 0xC02F)


def _ext(kind: int, data: bytes) -> bytes:
    return struct.pack(">HH", kind, len(data)) + data


def client_hello(server_name: str | None, *, size: int = 0) -> bytes:
    """A ClientHello handshake message naming `server_name` (none when None), padded
    with the padding extension (RFC 7685) to `size` bytes when given."""
    exts = b""
    if server_name is not None:
        name = server_name.encode()
        entry = b"\x00" + struct.pack(">H", len(name)) + name
        exts += _ext(0, struct.pack(">H", len(entry)) + entry)
    exts += _ext(43, b"\x02\x03\x04")  # supported_versions: TLS 1.3
    exts += _ext(10, b"\x00\x02\x00\x1d")  # supported_groups: x25519
    exts += _ext(13, b"\x00\x02\x08\x04")  # signature_algorithms: rsa_pss_rsae_sha256
    share = struct.pack(">HH", 0x001D, 32) + os.urandom(32)
    exts += _ext(51, struct.pack(">H", len(share)) + share)  # key_share

    def message(extensions: bytes) -> bytes:
        ciphers = b"".join(struct.pack(">H", c) for c in _CIPHERS)
        body = (
            b"\x03\x03"
            + os.urandom(32)
            + b"\x20"
            + os.urandom(32)
            + struct.pack(">H", len(ciphers))
            + ciphers
            + b"\x01\x00"
            + struct.pack(">H", len(extensions))
            + extensions
        )
        return b"\x01" + len(body).to_bytes(3, "big") + body

    hello = message(exts)
    if size > len(hello):
        pad = size - len(hello) - 4  # the padding extension's own header
        hello = message(exts + _ext(21, b"\x00" * max(pad, 0)))
    return hello


def records(handshake: bytes, record_size: int = 16384) -> bytes:
    """`handshake` in TLS records of at most `record_size` bytes (RFC 8446 §5.1)."""
    out = b""
    for i in range(0, len(handshake), record_size):
        part = handshake[i : i + record_size]
        out += b"\x16\x03\x01" + struct.pack(">H", len(part)) + part
    return out
