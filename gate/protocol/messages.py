"""Gate's typed messages: the NodeControl and RelayControl channels, and the data they carry.

Every message is a frozen msgspec Struct with an explicit string tag (spec §4.1), so
renaming a Python class never changes the wire. Each channel has one envelope
(`NodeMessage`, `RelayMessage`) whose `payload` is a tagged union decoded by its tag.

Evolution (spec §8): fields may be added with a default; a field's name, type and
meaning, and a tag, never change. Receivers ignore unknown fields on the wire
(`forbid_unknown_fields` is left off here on purpose) so that newer peers can add fields.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec

from gate.protocol.node_id import NodeIdStr

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "ActivateDomain",
    "ActivationResponse",
    "Capabilities",
    "CapabilityRequest",
    "CapabilityResponse",
    "Connected",
    "Connecting",
    "ConnectionStatus",
    "Disconnected",
    "DnsChallenge",
    "DnsChallengeResponse",
    "DomainRequest",
    "DomainResponse",
    "Failed",
    "Handshake",
    "HandshakeResponse",
    "ModelInfo",
    "NodeError",
    "NodeMessage",
    "NodePayload",
    "PeerInfo",
    "Ping",
    "Pong",
    "RelayError",
    "RelayMessage",
    "RelayPayload",
    "StreamType",
]

#: The protocol version this implementation speaks (spec §3).
PROTOCOL_VERSION: Final = 1
#: Every version it can negotiate down to, newest first.
SUPPORTED_VERSIONS: Final = (1,)

# Non-negative integers that fit a signed 64-bit field (ids, millisecond timestamps), so
# every language and msgpack implementation can hold them without surprises.
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Version = Annotated[int, msgspec.Meta(ge=1, le=255)]
#: Wire error codes are plain integers so that a code added later still decodes on an
#: older node (spec §9); ErrorCode names the ones this version knows.
WireErrorCode = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class StreamType(enum.Enum):
    """What a stream carries; sent in its preamble as a one-byte code (spec §3.3)."""

    NODE_CONTROL = "node_control"
    RELAY_CONTROL = "relay_control"
    HTTP_PROXY = "http_proxy"
    TLS_PROXY = "tls_proxy"


class _Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of every tagged message; subclasses set an explicit `tag`."""


# ---------------------------------------------------------------------------
# Data carried by messages
# ---------------------------------------------------------------------------


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A model that a node can serve."""

    id: str
    provider: str | None = None
    context_length: U64 | None = None


class Capabilities(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a node offers its peers (spec §5.3)."""

    node_id: NodeIdStr
    supported_models: list[ModelInfo] = []
    max_context_length: U64 = 0
    supports_streaming: bool = True
    load_factor: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0


class Connected(_Message, frozen=True, tag="connected"):
    since_ms: U64


class Connecting(_Message, frozen=True, tag="connecting"):
    attempt: Annotated[int, msgspec.Meta(ge=1)] = 1


class Disconnected(_Message, frozen=True, tag="disconnected"):
    since_ms: U64 | None = None


class Failed(_Message, frozen=True, tag="failed"):
    reason: str


ConnectionStatus = Connected | Connecting | Disconnected | Failed


class PeerInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What this node knows of a peer (for the CLI, the RPC and peers.json)."""

    node_id: NodeIdStr
    name: str | None = None
    addresses: list[str] = []
    status: ConnectionStatus = Disconnected()
    last_seen_ms: U64 | None = None
    capabilities: Capabilities | None = None


# ---------------------------------------------------------------------------
# NodeControl channel (spec §5)
# ---------------------------------------------------------------------------


class Handshake(_Message, frozen=True, tag="handshake"):
    node_id: NodeIdStr
    versions: Annotated[list[Version], msgspec.Meta(min_length=1)]
    agent: str = ""
    capabilities: Capabilities | None = None


class HandshakeResponse(_Message, frozen=True, tag="handshake_response"):
    node_id: NodeIdStr
    accepted: bool
    version: Version | None = None
    reason: str | None = None
    capabilities: Capabilities | None = None

    def __post_init__(self) -> None:
        if self.accepted and self.version is None:  # spec §5.4 MUST
            raise ValueError("an accepted handshake_response must carry the chosen version")


class CapabilityRequest(_Message, frozen=True, tag="capability_request"):
    pass


class CapabilityResponse(_Message, frozen=True, tag="capability_response"):
    capabilities: Capabilities


class Ping(_Message, frozen=True, tag="ping"):
    nonce: U64


class Pong(_Message, frozen=True, tag="pong"):
    nonce: U64


class NodeError(_Message, frozen=True, tag="error"):
    code: WireErrorCode
    message: str = ""


NodePayload = (
    Handshake | HandshakeResponse | CapabilityRequest | CapabilityResponse | Ping | Pong | NodeError
)


class NodeMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The envelope of every NodeControl frame (spec §5.1)."""

    version: Version
    id: U64
    timestamp: U64  # milliseconds since the Unix epoch, sender's clock
    payload: NodePayload
    reply_to: U64 | None = None


# ---------------------------------------------------------------------------
# RelayControl channel (spec §6)
# ---------------------------------------------------------------------------


class DomainRequest(_Message, frozen=True, tag="domain_request"):
    node_id: NodeIdStr


class DomainResponse(_Message, frozen=True, tag="domain_response"):
    domain: str


# An ACME DNS-01 TXT value: the unpadded base64url SHA-256 digest of a key authorization
# (RFC 8555 §8.4), always 43 characters. The lengths keep `$` from accepting a final
# newline (msgspec matches with re.search).
TxtValue = Annotated[str, msgspec.Meta(min_length=43, max_length=43, pattern="^[A-Za-z0-9_-]{43}$")]


class DnsChallenge(_Message, frozen=True, tag="dns_challenge"):
    domain: str
    txt_value: TxtValue


class DnsChallengeResponse(_Message, frozen=True, tag="dns_challenge_response"):
    ok: bool
    reason: str | None = None


class ActivateDomain(_Message, frozen=True, tag="activate_domain"):
    domain: str


class ActivationResponse(_Message, frozen=True, tag="activation_response"):
    ok: bool
    reason: str | None = None


class RelayError(_Message, frozen=True, tag="error"):
    code: WireErrorCode
    message: str = ""


RelayPayload = (
    DomainRequest
    | DomainResponse
    | DnsChallenge
    | DnsChallengeResponse
    | ActivateDomain
    | ActivationResponse
    | RelayError
)


class RelayMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The envelope of every RelayControl frame (spec §6.1)."""

    version: Version
    id: U64
    timestamp: U64
    payload: RelayPayload
    reply_to: U64 | None = None
