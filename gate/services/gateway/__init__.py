"""The API pipeline: authenticate, limit, route and relay each request (`pipeline`), what
one request is and how it can end (`exchange`), relaying a response and ending it when it
cannot end well (`relay`), token usage read off a relayed response (`usage_tap`),
translated exchanges between dialects (`translated`), count_tokens for engines without it
(`count_tokens`), forwarding to peers (`peers`), the model listing and /metrics
(`listing`), limits (`limits`) and Prometheus metrics (`metrics`).
"""

from __future__ import annotations

from gate.services.gateway.exchange import (
    ANSWERABLE,
    API_ROUTES,
    MAX_JSON_DEPTH,
    ApiError,
    ApiRoute,
    Exchange,
    Translation,
    api_error,
    decode_request,
    nested_too_deep,
)
from gate.services.gateway.limits import (
    ClientRateLimiter,
    InFlightLimiter,
    LimitExceeded,
    LimitScope,
    PeerLimiter,
    TokenBucket,
    retry_after_value,
)
from gate.services.gateway.metrics import (
    BUCKETS,
    CONTENT_TYPE,
    OTHER,
    UNKNOWN,
    Metrics,
)
from gate.services.gateway.pipeline import (
    MAX_MODEL_NAME,
    Gateway,
)
from gate.services.gateway.translated import (
    translate_request,
    translated_response,
)

__all__ = [
    "ANSWERABLE",
    "API_ROUTES",
    "BUCKETS",
    "CONTENT_TYPE",
    "MAX_JSON_DEPTH",
    "MAX_MODEL_NAME",
    "OTHER",
    "UNKNOWN",
    "ApiError",
    "ApiRoute",
    "ClientRateLimiter",
    "Exchange",
    "Gateway",
    "InFlightLimiter",
    "LimitExceeded",
    "LimitScope",
    "Metrics",
    "PeerLimiter",
    "TokenBucket",
    "Translation",
    "api_error",
    "decode_request",
    "nested_too_deep",
    "retry_after_value",
    "translate_request",
    "translated_response",
]
