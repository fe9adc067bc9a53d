"""The control plane: JSON-RPC and live events (`rpc`), the event bus (`events`) and the
web UI's files (`web_ui`).
"""

from __future__ import annotations

from gate.services.control.events import (
    Event,
    EventBus,
    EventLogHandler,
)
from gate.services.control.rpc import (
    RpcError,
    RpcService,
)
from gate.services.control.web_ui import (
    WEB_ROOT,
    StaticFiles,
    mount_web_ui,
)

__all__ = [
    "WEB_ROOT",
    "Event",
    "EventBus",
    "EventLogHandler",
    "RpcError",
    "RpcService",
    "StaticFiles",
    "mount_web_ui",
]
