"""The control plane: JSON-RPC and live events (`rpc`), what it may ask of a node
(`node_api`: the ControlledNode protocol), the event bus (`events`) and the web UI's
files (`web_ui`).
"""

from __future__ import annotations

from gate.services.control.events import (
    Event,
    EventBus,
    EventLogHandler,
)
from gate.services.control.node_api import (
    ControlledNode,
    FoundEngine,
    NodeStatus,
    NotStarted,
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
    "ControlledNode",
    "Event",
    "EventBus",
    "EventLogHandler",
    "FoundEngine",
    "NodeStatus",
    "NotStarted",
    "RpcError",
    "RpcService",
    "StaticFiles",
    "mount_web_ui",
]
