"""JSON Schema of the wire messages, generated from the structs (spec/schema/*.json).

The committed files are checked against this output by the test suite, so the
published schema can never drift from the code. Regenerate with `make spec`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gate.protocol.messages import Capabilities, NodeMessage, PeerInfo, RelayMessage
from gate.protocol.proxy import HttpFrame, TlsProxyHeader

__all__ = ["SCHEMAS", "render_schemas"]

#: file name in spec/schema/ -> the type it describes
SCHEMAS: Final[dict[str, Any]] = {
    "node_message.json": NodeMessage,
    "relay_message.json": RelayMessage,
    "http_frame.json": HttpFrame,
    "tls_proxy_header.json": TlsProxyHeader,
    "capabilities.json": Capabilities,
    "peer_info.json": PeerInfo,
}


def render_schemas() -> dict[str, str]:
    """Each schema as the exact text committed under spec/schema/."""
    out = {}
    for filename, type_ in SCHEMAS.items():
        schema = msgspec.json.schema(type_)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://gate.invalid/spec/schema/{filename}"
        text = msgspec.json.format(msgspec.json.encode(schema), indent=2).decode()
        out[filename] = text + "\n"
    return out
