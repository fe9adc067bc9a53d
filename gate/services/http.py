"""The HTTP API service: hypercorn's trio worker in front of Gate's ASGI app.

Start-up follows the supervisor's contract: sockets are bound and listening before
`task_status.started(binds)`. On shutdown hypercorn stops accepting at once, lets
in-flight requests finish for up to `drain_timeout`, then cancels them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from gate import __version__
from gate.errors import ServiceError
from gate.nursery import ServiceContext
from gate.protocol import PeerInfo
from gate.services.asgi import ASGIApp, Receive, Router, Scope, Send, send_json
from gate.services.providers import ProviderRegistry

__all__ = ["build_app", "serve_http"]

log = logging.getLogger("gate.http")


def build_app(
    *,
    node_id: str,
    registry: ProviderRegistry | None = None,
    peers: Callable[[], list[PeerInfo]] | None = None,
) -> Router:
    """The API app with /health. Other services add their routes to the same router."""
    router = Router()
    started = time.monotonic()

    @router.route("GET", "/health")
    async def health(scope: Scope, receive: Receive, send: Send) -> None:
        body: dict[str, object] = {
            "status": "ok",
            "node_id": node_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - started, 3),
        }
        if registry is not None:
            body["providers"] = {
                p.name: {"healthy": p.healthy, "models": len(p.models)} for p in registry.providers
            }
        if peers is not None:
            body["peers"] = {info.node_id: msgspec.to_builtins(info) for info in peers()}
        await send_json(send, 200, body)

    return router


def hypercorn_config(bind: str, drain_timeout: float) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [bind]
    config.graceful_timeout = drain_timeout
    config.keep_alive_timeout = 75.0  # longer than common client pools keep idle connections
    config.accesslog = None  # requests are recorded by Gate itself, off the hot path
    # Relayed responses carry the engine's own Server header; a second one from us would
    # make the response differ from the engine's.
    config.include_server_header = False
    config.errorlog = logging.getLogger("gate.http.server")
    return config


async def serve_http(
    ctx: ServiceContext,
    app: ASGIApp,
    *,
    bind: str,
    drain_timeout: float,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = hypercorn_config(bind, drain_timeout)
    # Bind here rather than inside hypercorn so that a busy port is a clear error at
    # this boundary, not an OSError deep in nested nurseries.
    try:
        sockets = config.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
    except OSError as exc:
        raise ServiceError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
    serve_app = partial(
        worker_serve,
        # hypercorn types scopes as TypedDicts; our handlers take plain mappings.
        wrap_app(app, config.wsgi_max_body_size, "asgi"),  # type: ignore[arg-type]
        config,
        sockets=sockets,
        shutdown_trigger=ctx.shutdown.wait,
    )
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve_app)
        for url in binds:
            log.info("listening", extra={"url": url})
        task_status.started(binds)
