"""The API pipeline: authenticate, limit, route and relay each request (`pipeline`), what
one request is and how it can end (`exchange`), translated exchanges between dialects
(`translated`), limits (`limits`) and Prometheus metrics (`metrics`).
"""

from __future__ import annotations

from gate.services.gateway.exchange import (
    API_ROUTES,
    MAX_JSON_DEPTH,
    ApiError,
    ApiRoute,
    Exchange,
    Translation,
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
    translate_request,
    translated_response,
)

__all__ = [
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
    "TokenBucket",
    "Translation",
    "decode_request",
    "nested_too_deep",
    "translate_request",
    "translated_response",
]
