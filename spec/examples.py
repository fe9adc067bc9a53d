"""One or more example instances of every wire type.

spec/generate.py writes the test vectors in spec/vectors from these, and the protocol
tests (tests/protocol) check every type against them. The TLS builders at the end make
the hand-built ClientHellos of client_hello.json (a relay reads their SNI, spec §7.4).
"""

from __future__ import annotations

from typing import Final

import msgspec

from gate.protocol import (
    ActivateDomain,
    ActivationResponse,
    Body,
    Capabilities,
    CapabilityRequest,
    CapabilityResponse,
    Connected,
    Connecting,
    Disconnected,
    DnsChallenge,
    DnsChallengeResponse,
    DomainRequest,
    DomainResponse,
    End,
    ErrorCode,
    Failed,
    Handshake,
    HandshakeResponse,
    HttpFrame,
    ModelInfo,
    NodeError,
    NodeMessage,
    NodePayload,
    PeerInfo,
    Ping,
    Pong,
    RelayError,
    RelayMessage,
    RelayPayload,
    RequestHead,
    ResponseHead,
    StreamError,
    TlsProxyHeader,
)

__all__ = [
    "CAPS",
    "CAPS_B",
    "HTTP_FRAMES",
    "NODE_A",
    "NODE_B",
    "NODE_PAYLOADS",
    "OTHER_VALUES",
    "RELAY_PAYLOADS",
    "REPLIES",
    "client_hello",
    "node_message",
    "relay_message",
    "server_name_extension",
    "tls_extension",
    "tls_records",
]

NODE_A: Final = "rabdagg7roz4mcxbih6ebefvnbhpykojhb2yqe6wami4df3x6zqa"
NODE_B: Final = "ejvf3sxll5o7upgf7gmn73vrd67bo5tflf2hz7tv7yv366yscrlq"

CAPS: Final = Capabilities(
    node_id=NODE_A,
    supported_models=[
        ModelInfo(id="llama3.2:1b", provider="ollama", context_length=8192),
        ModelInfo(id="tiny"),
    ],
    max_context_length=8192,
    supports_streaming=True,
    load_factor=0.25,
)

CAPS_B: Final = msgspec.structs.replace(CAPS, node_id=NODE_B, load_factor=0.5)

NODE_PAYLOADS: Final[dict[str, NodePayload]] = {
    "handshake": Handshake(node_id=NODE_A, versions=[1], agent="gate/0.1.0", capabilities=CAPS),
    "handshake_accepted": HandshakeResponse(
        node_id=NODE_B, accepted=True, version=1, capabilities=CAPS_B
    ),
    "handshake_refused": HandshakeResponse(
        node_id=NODE_B, accepted=False, reason="node is not a trusted peer"
    ),
    "capability_request": CapabilityRequest(),
    "capability_response": CapabilityResponse(capabilities=CAPS),
    "ping": Ping(nonce=7),
    "pong": Pong(nonce=7),
    "error": NodeError(code=ErrorCode.UNAUTHORIZED, message="not trusted"),
}

RELAY_PAYLOADS: Final[dict[str, RelayPayload]] = {
    "domain_request": DomainRequest(node_id=NODE_A),
    "domain_response": DomainResponse(domain=f"{NODE_A}.relay.example"),
    "dns_challenge": DnsChallenge(
        domain=f"_acme-challenge.{NODE_A}.relay.example",
        txt_value="LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
    ),
    "dns_challenge_response": DnsChallengeResponse(ok=True),
    "activate_domain": ActivateDomain(domain=f"{NODE_A}.relay.example"),
    "activation_response": ActivationResponse(ok=False, reason="no certificate yet"),
    "error": RelayError(code=ErrorCode.UNAUTHORIZED, message="not your name"),
}

HTTP_FRAMES: Final[dict[str, HttpFrame]] = {
    "request_head": RequestHead(
        method="POST",
        target="/v1/chat/completions",
        headers=[("content-type", "application/json"), ("x-a", "1"), ("x-a", "2")],
    ),
    "response_head": ResponseHead(status=200, headers=[("content-type", "text/event-stream")]),
    "body": Body(data=b'data: {"x": 1}\n\n\x00\xff'),
    "end": End(),
    "error": StreamError(code=ErrorCode.UNAVAILABLE, message="engine went away"),
}


# Answers name the message they answer.
REPLIES: Final = {
    "handshake_accepted",
    "handshake_refused",
    "capability_response",
    "pong",
    "domain_response",
    "dns_challenge_response",
    "activation_response",
}


def node_message(payload: NodePayload, id: int = 1, reply_to: int | None = None) -> NodeMessage:
    return NodeMessage(
        version=1, id=id, timestamp=1_764_000_000_000, payload=payload, reply_to=reply_to
    )


def relay_message(payload: RelayPayload, id: int = 1, reply_to: int | None = None) -> RelayMessage:
    return RelayMessage(
        version=1, id=id, timestamp=1_764_000_000_000, payload=payload, reply_to=reply_to
    )


OTHER_VALUES: Final[list[object]] = [
    CAPS,
    PeerInfo(node_id=NODE_B),
    PeerInfo(
        node_id=NODE_B,
        name="gpu-box",
        addresses=["127.0.0.1:41145"],
        status=Connected(since_ms=5),
        last_seen_ms=9,
        capabilities=CAPS,
    ),
    PeerInfo(node_id=NODE_B, status=Connecting(attempt=3)),
    PeerInfo(node_id=NODE_B, status=Failed(reason="handshake refused: not trusted")),
    PeerInfo(node_id=NODE_B, status=Disconnected(since_ms=1)),
    TlsProxyHeader(sni=f"{NODE_A}.relay.example", client_addr="203.0.113.9:50000"),
    msgspec.structs.replace(node_message(Pong(nonce=1)), reply_to=4),
]


# --- TLS ClientHellos, built field by field (RFC 8446 §4.1.2, RFC 6066 §3) --------------


def _u8(data: bytes) -> bytes:
    return len(data).to_bytes(1, "big") + data


def _u16(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def tls_extension(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + _u16(data)


def server_name_extension(*names: bytes | tuple[int, bytes]) -> bytes:
    """A server_name extension listing `names`: host_name entries, or (name_type, name)."""
    entries = b"".join(
        bytes([entry[0]]) + _u16(entry[1]) if isinstance(entry, tuple) else b"\x00" + _u16(entry)
        for entry in names
    )
    return tls_extension(0, _u16(entries))


def client_hello(
    extensions: list[bytes] | None,
    *,
    legacy_version: int = 0x0303,
    session_id: bytes = bytes(range(32)),
    cipher_suites: bytes = bytes.fromhex("130113021303"),
) -> bytes:
    """A ClientHello handshake message (header included); `extensions` None omits the
    extensions field entirely, as pre-TLS 1.3 clients may."""
    body = (
        legacy_version.to_bytes(2, "big")
        + bytes(range(0x20, 0x40))  # random
        + _u8(session_id)
        + _u16(cipher_suites)
        + _u8(b"\x00")  # compression methods: null only
    )
    if extensions is not None:
        body += _u16(b"".join(extensions))
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_records(handshake: bytes, sizes: list[int] | None = None, version: int = 0x0301) -> bytes:
    """`handshake` in handshake records, cut after each size in `sizes` (one record when
    None; the rest goes in the last record)."""
    pieces, at = [], 0
    for size in sizes or []:
        if at + size >= len(handshake):
            break
        pieces.append(handshake[at : at + size])
        at += size
    pieces.append(handshake[at:])
    header = b"\x16" + version.to_bytes(2, "big")
    return b"".join(header + _u16(piece) for piece in pieces)
