"""The API pipeline: authenticate, limit, route and relay each request (`pipeline`), what
one request is and how it can end (`exchange`), translated exchanges between dialects
(`translated`), limits (`limits`) and Prometheus metrics (`metrics`).
"""

from __future__ import annotations

from gate.services.gateway.exchange import (
    ENDPOINTS,
    MAX_JSON_DEPTH,
    ApiError,
    Bridge,
    Endpoint,
    Exchange,
    decode_request,
    nested_too_deep,
)
from gate.services.gateway.limits import (
    ClientRateLimiter,
    InFlightLimiter,
    LimitExceeded,
    LimitScope,
    TokenBucket,
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
    response_bridge,
    translate_request,
)

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
    "ENDPOINTS",
    "MAX_JSON_DEPTH",
    "MAX_MODEL_NAME",
    "OTHER",
    "UNKNOWN",
    "ApiError",
    "Bridge",
    "ClientRateLimiter",
    "Endpoint",
    "Exchange",
    "Gateway",
    "InFlightLimiter",
    "LimitExceeded",
    "LimitScope",
    "Metrics",
    "TokenBucket",
    "decode_request",
    "nested_too_deep",
    "response_bridge",
    "translate_request",
]
