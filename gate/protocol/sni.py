"""The server name (SNI) of a TLS ClientHello, read sans-IO for the relay (spec §7.4).

Theory of operation
-------------------
A relay learns which node a browser wants from the server_name extension of the
browser's first TLS message, the ClientHello, and then forwards every byte it received,
unchanged, to that node: it never terminates TLS. ClientHelloReader takes those bytes in
whatever pieces TCP delivers them and answers once the ClientHello is whole:

    record (RFC 8446 §5.1)    content type u8 = 22 (handshake), legacy_record_version
                              u16 = 0x0301..0x0303, length u16 = 1..2^14, fragment
    handshake (§4)            msg_type u8 = 1 (client_hello), length u24, body; the body
                              may span several records (a post-quantum key share makes a
                              browser's ClientHello ~2 KB; any client may split it)
    ClientHello (§4.1.2)      legacy_version u16, random[32], session_id<0..32>,
                              cipher_suites<2..2^16-2>, compression_methods<1..2^8-1>,
                              extensions<0..2^16-1>: type u16 + data<0..2^16-1> each,
                              no type twice (§4.2)
    server_name (RFC 6066 §3) server_name_list<1..2^16-1> of name_type u8 + a u16-long
                              name; name_type 0 is host_name, at most one of them

Bounds. The handshake message may be at most `max_size` bytes (16.5 KiB by default:
more than any browser sends, and more than one full record). Lengths are checked when
their header arrives, so the reader never waits for bytes it would then refuse. Each
record carries at least one byte of the ClientHello, so what is buffered before the
answer is at most about 6 times max_size, plus whatever the last piece fed brought after it.

Cost. A feed appends and reads record headers; the ClientHello is parsed once, when its
last byte is in. Fed one byte at a time, the work stays linear in the bytes.

Time. This package reads no clock: the relay MUST bound the wait itself (a few seconds
for the whole ClientHello), or a client that sends half of one holds a connection open.

Errors. Every refusal raises an SniError subclass (gate.protocol.errors) with a stable
`reason`: not_tls, not_client_hello, malformed, too_large, no_sni, ip_literal,
invalid_name. Nothing else escapes, whatever the bytes (tests/protocol/test_sni.py).
"""

from __future__ import annotations

import re
from typing import Final

from gate.protocol.errors import (
    ClientHelloTooLargeError,
    MalformedClientHelloError,
    NoServerNameError,
    NotClientHelloError,
    NotTlsError,
    SniError,
)

__all__ = ["DEFAULT_MAX_CLIENT_HELLO", "ClientHelloReader"]

#: 16 KiB + 512: a ClientHello that fills a whole record still fits, with room to spare.
DEFAULT_MAX_CLIENT_HELLO: Final = 16 * 1024 + 512

_RECORD_HEADER: Final = 5
_MAX_FRAGMENT: Final = 1 << 14  # RFC 8446 §5.1
_HANDSHAKE_HEADER: Final = 4
_HANDSHAKE: Final = 22
_CLIENT_HELLO: Final = 1
_OTHER_RECORD_TYPES: Final = {
    20: "change_cipher_spec",
    21: "alert",
    23: "application_data",
    24: "heartbeat",
}
_EXT_SERVER_NAME: Final = 0
_HOST_NAME: Final = 0
_RANDOM_END: Final = 2 + 32  # legacy_version, random

# A DNS host name (RFC 1123 §2.1 letters, digits, hyphens), matched after lower-casing.
_LABEL: Final = rb"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME_RE: Final = re.compile(rb"(?:%s\.)*%s" % (_LABEL, _LABEL))
# What reads as an address: a numeric (or 0x) last label is how browsers read IPv4
# (127.1, 0x7f.1; no top-level domain is numeric), and a colon only occurs in IPv6.
_NUMERIC_LABEL_RE: Final = re.compile(rb"[0-9]+|0x[0-9a-f]*")
_IPV6_RE: Final = re.compile(rb"\[?[0-9a-f:.]*:[0-9a-f:.]*\]?")
_MAX_NAME: Final = 253  # RFC 1035 §2.3.4, without the trailing dot


class ClientHelloReader:
    """Collects a TLS ClientHello from the bytes a client sends, across TCP segments and
    across several TLS records, up to `max_size` bytes of handshake."""

    def __init__(self, max_size: int = DEFAULT_MAX_CLIENT_HELLO) -> None:
        if max_size < _HANDSHAKE_HEADER:
            raise ValueError(f"max_size {max_size} cannot hold a handshake header")
        self.max_size = max_size
        self._received = bytearray()
        self._pos = 0  # start of the first record not consumed yet
        self._handshake = bytearray()  # the records' fragments, joined
        self._length: int | None = None  # of the handshake message, header included
        self._name: str | None = None
        self._error: SniError | None = None

    def feed(self, data: bytes) -> str | None:
        """Feed what arrived; the server name (lower-cased, ASCII, without a trailing dot)
        once the ClientHello is complete, None while more is needed. Raises a SniError
        subclass when the bytes cannot be a ClientHello with a usable server name.

        After the answer, further bytes are only kept (see `received`); after a refusal,
        every feed raises the same error.
        """
        if self._error is not None:
            raise self._error
        self._received += data
        if self._name is not None:
            return self._name
        try:
            return self._advance()
        except SniError as exc:
            self._error = exc
            raise

    @property
    def received(self) -> bytes:
        """Every byte fed so far, unchanged: what the relay forwards to the node."""
        return bytes(self._received)

    def _advance(self) -> str | None:
        buf = self._received
        while True:
            pos = self._pos
            available = len(buf) - pos
            if available < _RECORD_HEADER:
                if pos == 0 and available:  # refuse "GET /" or "SSH-2.0" at its first byte
                    _check_record_start(buf, first=True)
                return None
            _check_record_start(buf, first=pos == 0, at=pos)
            length = buf[pos + 3] << 8 | buf[pos + 4]
            if not 0 < length <= _MAX_FRAGMENT:
                raise MalformedClientHelloError(
                    f"a handshake record of {length} bytes (RFC 8446 §5.1: 1..{_MAX_FRAGMENT})"
                )
            self._check_room(length)
            end = pos + _RECORD_HEADER + length
            if len(buf) < end:
                return None
            self._handshake += buf[pos + _RECORD_HEADER : end]
            self._pos = end
            hello = self._handshake
            if self._length is None and len(hello) >= _HANDSHAKE_HEADER:
                if hello[0] != _CLIENT_HELLO:
                    raise NotClientHelloError(
                        f"handshake message type {hello[0]} where a ClientHello (1) comes first"
                    )
                self._length = _HANDSHAKE_HEADER + int.from_bytes(hello[1:4], "big")
                if self._length > self.max_size:
                    raise ClientHelloTooLargeError(
                        f"a ClientHello of {self._length} bytes (this reader takes at most "
                        f"{self.max_size})"
                    )
            if self._length is not None:
                if len(hello) > self._length:
                    raise MalformedClientHelloError(
                        f"{len(hello) - self._length} bytes after the ClientHello in its record"
                    )
                if len(hello) == self._length:
                    self._name = _server_name(bytes(hello[_HANDSHAKE_HEADER:]))
                    return self._name

    def _check_room(self, length: int) -> None:
        """Refuse a record, from its header, that would carry more than the ClientHello."""
        total = len(self._handshake) + length
        if self._length is not None and total > self._length:
            raise MalformedClientHelloError(
                f"a record runs {total - self._length} bytes past the end of the ClientHello"
            )
        if total > self.max_size:
            raise ClientHelloTooLargeError(
                f"more than {self.max_size} bytes of handshake (this reader's bound)"
            )


def _check_record_start(buf: bytearray, *, first: bool, at: int = 0) -> None:
    """The content type and legacy_record_version of the record at `at`, as far as they
    have arrived (the first record is checked from its first byte on)."""
    kind = buf[at]
    if kind != _HANDSHAKE:
        other = _OTHER_RECORD_TYPES.get(kind)
        if other is None:
            if first:
                raise NotTlsError(f"not TLS: the stream starts {bytes(buf[at : at + 8])!r}")
            raise MalformedClientHelloError(f"record type {kind} inside the ClientHello")
        if first:
            raise NotClientHelloError(f"a TLS {other} record where a ClientHello comes first")
        # RFC 8446 §5.1: handshake messages MUST NOT be interleaved with other records.
        raise MalformedClientHelloError(f"a TLS {other} record inside the ClientHello")
    if len(buf) > at + 1 and buf[at + 1] != 3:
        if first:
            raise NotTlsError(f"not TLS: the stream starts {bytes(buf[at : at + 8])!r}")
        raise MalformedClientHelloError(f"record version {buf[at + 1]}.x inside the ClientHello")
    if len(buf) > at + 2 and not 1 <= buf[at + 2] <= 3:
        raise MalformedClientHelloError(
            f"legacy_record_version 3.{buf[at + 2]} (clients send 3.1 to 3.3)"
        )


def _vector(body: bytes, at: int, width: int, end: int, what: str) -> tuple[int, int]:
    """The bounds of the length-prefixed vector at `at`, which must end by `end`."""
    start = at + width
    if start > end:
        raise MalformedClientHelloError(f"the length of {what} runs past its end")
    stop = start + int.from_bytes(body[at:start], "big")
    if stop > end:
        raise MalformedClientHelloError(f"{what} runs {stop - end} bytes past its end")
    return start, stop


def _server_name(body: bytes) -> str:
    """The host name of a whole ClientHello body (after the handshake header)."""
    end = len(body)
    if end < _RANDOM_END:
        raise MalformedClientHelloError("the ClientHello ends inside its random")
    if body[0] != 3 or not 1 <= body[1] <= 3:
        raise MalformedClientHelloError(f"ClientHello legacy_version {body[0]}.{body[1]}")
    start, at = _vector(body, _RANDOM_END, 1, end, "legacy_session_id")
    if at - start > 32:
        raise MalformedClientHelloError(f"a session id of {at - start} bytes (at most 32)")
    start, at = _vector(body, at, 2, end, "cipher_suites")
    if at == start or (at - start) % 2:
        raise MalformedClientHelloError(f"cipher_suites of {at - start} bytes")
    start, at = _vector(body, at, 1, end, "legacy_compression_methods")
    if at == start:
        raise MalformedClientHelloError("no compression method")
    if at == end:  # extensions are optional before TLS 1.3 (RFC 5246 §7.4.1.2)
        raise NoServerNameError("a ClientHello without extensions, so without a server name")
    at, stop = _vector(body, at, 2, end, "extensions")
    if stop != end:
        raise MalformedClientHelloError(f"{end - stop} bytes after the extensions")
    seen: set[int] = set()
    host: bytes | None = None
    while at < stop:
        if stop - at < 4:
            raise MalformedClientHelloError("the extensions end inside an extension header")
        # Inline rather than _vector(): this loop runs for every extension (~20 in a
        # browser's ClientHello), the rest of the parse a few times in all.
        kind = body[at] << 8 | body[at + 1]
        start = at + 4
        at = start + (body[at + 2] << 8 | body[at + 3])
        if at > stop:
            raise MalformedClientHelloError(f"extension {kind} runs {at - stop} bytes past its end")
        if kind in seen:  # RFC 8446 §4.2 MUST NOT
            raise MalformedClientHelloError(f"extension {kind} twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            host = _host_name(body, start, at)
    if host is None:
        raise NoServerNameError("a ClientHello without a server name")
    return _checked_name(host)


def _host_name(body: bytes, start: int, end: int) -> bytes | None:
    """The host_name entry of a server_name extension's data, or None if it has none."""
    at, stop = _vector(body, start, 2, end, "server_name_list")
    if stop != end or at == stop:
        raise MalformedClientHelloError("a server_name extension of inconsistent lengths")
    host: bytes | None = None
    while at < stop:
        name_type = body[at]
        # RFC 6066 §3: every name type, known or not, is a u16-long vector.
        start, at = _vector(body, at + 1, 2, stop, f"server name of type {name_type}")
        if name_type == _HOST_NAME:
            if host is not None:  # RFC 6066 §3 MUST NOT
                raise MalformedClientHelloError("two host names in server_name")
            if at == start:
                raise MalformedClientHelloError("an empty host name")
            host = body[start:at]
    return host


def _checked_name(raw: bytes) -> str:
    """`raw` as a DNS host name: lower case, no trailing dot. Addresses are refused."""
    name = raw.lower()
    if name.endswith(b"."):
        name = name[:-1]
    if len(name) > _MAX_NAME:
        raise NoServerNameError(f"a host name of {len(name)} bytes", "invalid_name")
    if _NUMERIC_LABEL_RE.fullmatch(name.rpartition(b".")[2]) or _IPV6_RE.fullmatch(name):
        # RFC 6066 §3: "Literal IPv4 and IPv6 addresses are not permitted in HostName."
        raise NoServerNameError(f"an IP address as server name: {raw[:64]!r}", "ip_literal")
    if not _HOST_NAME_RE.fullmatch(name):
        raise NoServerNameError(f"not a DNS host name: {raw[:64]!r}", "invalid_name")
    return name.decode("ascii")
