"""What the node keeps: the SQLite database (`database`), API keys (`apikeys`) and the
usage log (`usage`).
"""

from __future__ import annotations

from gate.services.store.apikeys import (
    KEY_PREFIX,
    MAX_NAME_LENGTH,
    ApiKeyInfo,
    ApiKeys,
    InvalidKeyName,
    extract_key,
)
from gate.services.store.database import (
    MIGRATIONS,
    Params,
    Store,
    open_store,
)
from gate.services.store.usage import (
    DROP_WARNING_INTERVAL,
    UsageRecord,
    UsageRecorder,
    query_usage,
)

__all__ = [
    "DROP_WARNING_INTERVAL",
    "KEY_PREFIX",
    "MAX_NAME_LENGTH",
    "MIGRATIONS",
    "ApiKeyInfo",
    "ApiKeys",
    "InvalidKeyName",
    "Params",
    "Store",
    "UsageRecord",
    "UsageRecorder",
    "extract_key",
    "open_store",
    "query_usage",
]
