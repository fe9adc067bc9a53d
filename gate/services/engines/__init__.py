"""Reaching inference engines: the pooled HTTP/1.1 client (`client`), the registry of
engines with health checks and discovery (`registry`), and token counting (`tokens`).
"""

from __future__ import annotations

from gate.services.engines.client import (
    IDLE_TIMEOUT,
    Origin,
    StreamedResponse,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from gate.services.engines.registry import (
    KINDS,
    Dialect,
    Kind,
    Provider,
    ProviderRegistry,
    discover_engines,
    strip_v1,
)
from gate.services.engines.tokens import (
    count_prompt_tokens,
    prompt_text,
)

__all__ = [
    "IDLE_TIMEOUT",
    "KINDS",
    "Dialect",
    "Kind",
    "Origin",
    "Provider",
    "ProviderRegistry",
    "StreamedResponse",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "count_prompt_tokens",
    "discover_engines",
    "prompt_text",
    "strip_v1",
]
