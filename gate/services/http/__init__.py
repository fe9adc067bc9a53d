"""The HTTP front: the accept loop that keeps each connection's failures in it
(`server`), and the small ASGI router every door uses (`router`).
"""

from __future__ import annotations

from gate.services.http.router import (
    EVERY_DOOR,
    LOCAL_ONLY,
    PEER_ONLY,
    ASGIApp,
    BodyError,
    Door,
    Handler,
    Route,
    Router,
    cancel_on_disconnect,
    read_body,
    send_json,
)
from gate.services.http.server import (
    build_app,
    serve_http,
)

__all__ = [
    "EVERY_DOOR",
    "LOCAL_ONLY",
    "PEER_ONLY",
    "ASGIApp",
    "BodyError",
    "Door",
    "Handler",
    "Route",
    "Router",
    "build_app",
    "cancel_on_disconnect",
    "read_body",
    "send_json",
    "serve_http",
]
