"""What HttpProxy and TlsProxy streams carry (spec §7).

HttpProxy: one HTTP request and its response per stream. The requester sends
`RequestHead`, any number of `Body` chunks, then `End`; the responder answers with
`ResponseHead`, `Body` chunks, then `End` — or `StreamError` at any point, which ends
the response. Bodies are streamed chunk by chunk, never buffered whole, so a token
the engine produces reaches the client as soon as it is read. The order is enforced
by the HTTP_PROXY transition table in gate.protocol.channel.

TlsProxy: one `TlsProxyHeader` frame from the relay, then raw TLS bytes both ways,
unframed: the relay never sees plaintext.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from gate.protocol.errors import ErrorCode
from gate.protocol.messages import WireErrorCode

__all__ = [
    "Body",
    "End",
    "HttpFrame",
    "RequestHead",
    "ResponseHead",
    "StreamError",
    "TlsProxyHeader",
    "http_status_of",
]

#: Header fields as [name, value] pairs: order and repeated names are kept, as on HTTP/1.1.
Headers = list[tuple[str, str]]
Status = Annotated[int, msgspec.Meta(ge=100, le=599)]


class _Frame(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    pass


class RequestHead(_Frame, frozen=True, tag="request_head"):
    method: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    target: Annotated[str, msgspec.Meta(min_length=1)]  # path and query, e.g. /v1/models
    headers: Headers = []


class ResponseHead(_Frame, frozen=True, tag="response_head"):
    status: Status
    headers: Headers = []


class Body(_Frame, frozen=True, tag="body"):
    data: bytes


class End(_Frame, frozen=True, tag="end"):
    pass


class StreamError(_Frame, frozen=True, tag="error"):
    """Ends a stream with a reason. Also the bare error frame of spec §3.5."""

    code: WireErrorCode
    message: str = ""


HttpFrame = RequestHead | ResponseHead | Body | End | StreamError

# spec §7.5: the HTTP status a requesting node gives its client for a StreamError that
# came before any response head. Every other code (refused, protocol errors, the
# peer's own failure, codes this node does not know) means the peer failed: 502.
_STATUS_OF_CODE: dict[int, int] = {
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


def http_status_of(code: int) -> int:
    """The status for a peer's StreamError `code` received before a response head."""
    return _STATUS_OF_CODE.get(code, 502)


class TlsProxyHeader(_Frame, frozen=True, tag="tls_proxy_header"):
    sni: str
    client_addr: str | None = None
