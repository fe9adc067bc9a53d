"""The one error tree of Gate, rooted here because gate/protocol has no dependencies.

    GateError
    ├── ProtocolError            carries a wire ErrorCode
    │   ├── LocalProtocolError   we were asked to do something the protocol forbids
    │   └── RemoteProtocolError  the peer sent something the protocol forbids
    ├── SniError                 a relay's client sent no ClientHello with a usable name
    │   ├── NotTlsError          not TLS at all (an HTTP request, an SSH banner)
    │   ├── NotClientHelloError  TLS, but not a ClientHello first
    │   ├── MalformedClientHelloError  a length or field that breaks the TLS grammar
    │   ├── ClientHelloTooLargeError   more handshake than the reader's bound
    │   └── NoServerNameError    no server name, or one that cannot name a node
    └── (service errors, in gate.errors)

As in h11: the sans-IO code raises LocalProtocolError for misuse by its caller and
RemoteProtocolError for bad input from the wire, so a caller can tell "my bug" from
"their bug", and every protocol error maps to a code the peer can be sent
(spec/protocol.md §9).

SniError is apart from ProtocolError: it is about the bytes a browser sends a relay
(TLS, spec §7.4), which have no Gate wire code. Its `reason` is a short stable label
for metrics and logs.
"""

from __future__ import annotations

import enum

__all__ = [
    "ClientHelloTooLargeError",
    "ErrorCode",
    "GateError",
    "LocalProtocolError",
    "MalformedClientHelloError",
    "NoServerNameError",
    "NotClientHelloError",
    "NotTlsError",
    "ProtocolError",
    "RemoteProtocolError",
    "SniError",
]


class ErrorCode(enum.IntEnum):
    """Wire error codes (spec/protocol.md §9). Values never change; new codes may be added,
    so receivers decode codes as integers and treat an unknown one by its hundred."""

    # 1xx: framing and stream setup
    MALFORMED_PREAMBLE = 100
    UNSUPPORTED_VERSION = 101
    UNKNOWN_STREAM_TYPE = 102
    FRAME_TOO_LARGE = 103
    TRUNCATED = 105
    STREAM_TYPE_NOT_SERVED = 106  # known, but not served in this role or configuration
    # 2xx: messages and state
    INVALID_MESSAGE = 200
    UNEXPECTED_MESSAGE = 201
    # 3xx: authorization and policy
    UNAUTHORIZED = 300
    RATE_LIMITED = 301
    # 4xx: the request could not be served
    NOT_FOUND = 400
    UNAVAILABLE = 401
    TIMEOUT = 402
    CANCELLED = 403
    # 5xx: the sender failed
    INTERNAL = 500


_KNOWN_CODES = frozenset(ErrorCode)


class GateError(Exception):
    """Root of every error Gate raises on purpose."""


class ProtocolError(GateError):
    """A violation of the wire protocol, with the code to send the peer."""

    def __init__(self, message: str, code: int = ErrorCode.INVALID_MESSAGE) -> None:
        super().__init__(message)
        # A code the peer sent may be newer than this ErrorCode: keep it as an int then.
        self.code: ErrorCode | int = ErrorCode(code) if code in _KNOWN_CODES else code

    def __repr__(self) -> str:
        name = self.code.name if isinstance(self.code, ErrorCode) else str(self.code)
        return f"{type(self).__name__}({str(self)!r}, code={name})"


class LocalProtocolError(ProtocolError):
    """We tried to send something that breaks the protocol (a bug on this side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that breaks the protocol."""


class SniError(GateError):
    """The bytes a client sent a relay are not a ClientHello with a usable server name.

    `reason` is one of a few stable labels (each subclass's, or the one it was given).
    """

    reason: str = "malformed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, reason={self.reason!r})"


class NotTlsError(SniError):
    """The first bytes are not a TLS record at all: an HTTP request, an SSH banner..."""

    reason = "not_tls"


class NotClientHelloError(SniError):
    """TLS, but something else first: an alert, change_cipher_spec, application data, or a
    handshake message other than ClientHello."""

    reason = "not_client_hello"


class MalformedClientHelloError(SniError):
    """A record or ClientHello whose lengths or fields break the TLS grammar."""

    reason = "malformed"


class ClientHelloTooLargeError(SniError):
    """The ClientHello is longer than the reader agreed to buffer."""

    reason = "too_large"


class NoServerNameError(SniError):
    """A well-formed ClientHello without a usable server name: reason "no_sni" (none
    sent), "ip_literal" (an address, which RFC 6066 §3 forbids) or "invalid_name" (not
    a DNS host name)."""

    reason = "no_sni"
