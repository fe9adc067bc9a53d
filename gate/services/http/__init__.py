"""The HTTP front: the accept loop that keeps each connection's failures in it
(`server`), and the small ASGI router every door uses (`router`).
"""

from __future__ import annotations

from gate.services.http.router import (
    ASGIApp,
    BodyError,
    Handler,
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
    "ASGIApp",
    "BodyError",
    "Handler",
    "Router",
    "build_app",
    "cancel_on_disconnect",
    "read_body",
    "send_json",
    "serve_http",
]
