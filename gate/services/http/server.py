"""The HTTP API service: hypercorn's HTTP/1.1 protocol in Gate's own accept loop.

Start-up follows the supervisor's contract: sockets are bound and listening before
`task_status.started(binds)`. On shutdown it stops accepting at once, lets in-flight
requests finish for up to `drain_timeout`, then cancels them.

Why not hypercorn's `worker_serve`: it runs every connection in one nursery, so an
exception that escapes one connection (a protocol race, a bug in a library) ends the
whole server, and with it the node. Here each connection runs in `_serve_connection`,
which keeps any failure inside it: logged once, that connection closed, the rest
untouched. hypercorn still does the HTTP (its h11 protocol and ASGI glue); only the
loop around it, ~40 lines, is ours.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from gate import __version__
from gate.errors import ServiceError
from gate.nursery import ServiceContext
from gate.protocol import PeerInfo
from gate.services.engines.registry import ProviderRegistry
from gate.services.http.router import (
    LOCAL_ONLY,
    REMOTE_DOORS,
    ASGIApp,
    Door,
    Receive,
    Route,
    Router,
    Scope,
    Send,
    send_json,
)

__all__ = ["build_app", "serve_http", "serve_stream"]

log = logging.getLogger("gate.http")


def build_app(
    *,
    node_id: str,
    registry: ProviderRegistry | None = None,
    peers: Callable[[], list[PeerInfo]] | None = None,
    relays: Callable[[], list[dict[str, str]]] | None = None,
    authorized: Callable[[Scope], bool] | None = None,
    door: Door = Door.LOCAL,
) -> Router:
    """The router of `door`, with /health. Other services add their routes to it: the
    Gateway its API (Gateway.install), and on the local door the control plane and the
    web UI.

    On the local door `authorized(scope)` says whether the caller may see the node's
    topology (engine names, peers' ids and addresses); others learn only that the node
    is alive. So does every peer: it learns this node's models from its capabilities,
    and whom else the node trusts is none of its business.
    """
    router = Router()
    started = time.monotonic()

    async def health(scope: Scope, receive: Receive, send: Send) -> None:
        body: dict[str, object] = {"status": "ok"}
        if authorized is None or authorized(scope):
            body["node_id"] = node_id
            body["version"] = __version__
            body["uptime_s"] = round(time.monotonic() - started, 3)
            if registry is not None:
                body["providers"] = {
                    p.name: {"healthy": p.healthy, "models": len(p.models)}
                    for p in registry.providers
                }
            if peers is not None:
                body["peers"] = {info.node_id: msgspec.to_builtins(info) for info in peers()}
            if relays is not None:
                body["relays"] = relays()
        await send_json(send, 200, body)

    router.add_routes(
        [
            Route("GET", "/health", health, LOCAL_ONLY),
            Route("GET", "/health", _alive, REMOTE_DOORS),
        ],
        door,
    )
    return router


async def _alive(scope: Scope, receive: Receive, send: Send) -> None:
    await send_json(send, 200, {"status": "ok"})


def hypercorn_config(bind: str, backlog: int) -> HypercornConfig:
    """What hypercorn's connection code reads (the drain is `serve_http`'s own)."""
    config = HypercornConfig()
    config.bind = [bind]
    config.backlog = backlog
    config.keep_alive_timeout = 75.0  # longer than common client pools keep idle connections
    config.accesslog = None  # requests are recorded by Gate itself, off the hot path
    # Relayed responses carry the engine's own Server header; a second one from us would
    # make the response differ from the engine's.
    config.include_server_header = False
    config.errorlog = logging.getLogger("gate.http.server")
    return config


class _Connection(TCPServer):
    """hypercorn's connection, mended in two places: its sends can be ended, and its close
    waits for the send in progress.

    hypercorn sends under `send_lock` but half-closes (`send_eof`) without it; a request
    with `Connection: close` followed by stray bytes makes it answer those bytes with a
    400 while it closes after the app's response, and trio refused the second concurrent
    send with BusyResourceError.
    """

    def __init__(self, *args: Any, sends: set[trio.CancelScope]) -> None:
        super().__init__(*args)
        self._sends = sends  # the scopes of the sends in progress, for the hard stop

    async def protocol_send(self, event: Event) -> None:
        """hypercorn's send, with a way out of a send that never ends.

        The send is shielded, as hypercorn's is, so a cancellation never leaves half a
        chunk on the wire; but unbounded, a client that stops reading held its task, and
        the node's shutdown, for ever. Its scope is known to the hard stop, and a client
        that takes longer than `_SEND_STALL_TIMEOUT` to accept one chunk loses its
        connection.
        """
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        broken = False
        async with self.send_lock:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _SEND_STALL_TIMEOUT
                self._sends.add(scope)
                try:
                    await self.stream.send_all(event.data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    broken = True
                finally:
                    self._sends.discard(scope)
            if scope.cancelled_caught:  # part of a chunk may be out: the stream is done
                broken = True
                await trio.aclose_forcefully(self.stream)
        if broken:
            await self.protocol.handle(Closed())

    async def _close(self) -> None:
        try:
            async with self.send_lock:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, AttributeError
                ):
                    await self.stream.send_eof()  # AttributeError: an SSLStream has none
        finally:
            await self.stream.aclose()


async def serve_http(
    ctx: ServiceContext,
    app: ASGIApp,
    *,
    bind: str,
    drain_timeout: float,
    backlog: int = 4096,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = hypercorn_config(bind, backlog)
    # Bind here so that a busy port is a clear error at this boundary.
    try:
        sockets = config.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
    except OSError as exc:
        raise ServiceError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
    _raise_open_files_limit()
    listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        for sock in sockets.insecure_sockets
    ]
    binds = [
        f"http://{repr_socket_addr(sock.family, sock.getsockname())}"
        for sock in sockets.insecure_sockets
    ]
    # hypercorn types scopes as TypedDicts; our handlers take plain mappings.
    wrapped: Any = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    context = WorkerContext(None)
    sends: set[trio.CancelScope] = set()

    async def serve_connection(stream: trio.SocketStream) -> None:
        # hypercorn annotates the stream as TLS, but serves plain streams the same way.
        server = _Connection(wrapped, config, context, ConnectionState({}), stream, sends=sends)
        await _serve_connection(server, stream)

    # The outer nursery's scope carries the drain deadline; its guard task ends the
    # shielded sends when that scope is cancelled, by the deadline or from outside.
    async with trio.open_nursery() as service:
        service.start_soon(_end_sends_when_cancelled, sends)
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                await accepting.start(
                    partial(trio.serve_listeners, handler_nursery=connections),
                    serve_connection,
                    listeners,
                )
                for url in binds:
                    log.info("listening", extra={"url": url})
                task_status.started(binds)
                await ctx.wait_shutdown()
                accepting.cancel_scope.cancel()  # stop accepting: closes the listening sockets
            # Idle keep-alive connections close now; requests in flight get until the deadline.
            await context.terminated.set()
            service.cancel_scope.deadline = trio.current_time() + drain_timeout
        service.cancel_scope.cancel()  # every connection ended in time


class _StreamConnection(_Connection):
    """A connection over any trio stream (TLS over a relay's iroh stream), not a socket:
    hypercorn's `run` reads both addresses from the socket, so they are given here."""

    def __init__(self, *args: Any, sends: set[trio.CancelScope], client: tuple[str, int]) -> None:
        super().__init__(*args, sends=sends)
        self._client = client
        self._input_ended = False

    async def run(self) -> None:
        try:
            ssl = isinstance(self.stream, trio.SSLStream)
            alpn = "http/1.1"
            if isinstance(self.stream, trio.SSLStream):
                try:
                    with trio.fail_after(self.config.ssl_handshake_timeout):
                        await self.stream.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError):
                    return  # not a TLS client, or one that does not trust our certificate
                alpn = self.stream.selected_alpn_protocol() or alpn
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    self._client,
                    None,
                    self.protocol_send,
                    alpn,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client's input ended. hypercorn's keep-alive wait (restarted whenever a
        # response ends, which may be after this) would hold the stream open for
        # keep_alive_timeout more: a relay's stream, and the QUIC stream credit it
        # takes, must go now (each open one holds one of the ~100 a relay may open).
        self._input_ended = True
        await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        if not self._input_ended:
            await super()._idle_timeout()


_STREAM_CONFIG: Final = hypercorn_config("127.0.0.1:0", 1)


async def serve_stream(app: ASGIApp, stream: trio.abc.Stream, *, client: tuple[str, int]) -> None:
    """Serve one HTTP/1.1 connection carried by `stream` (a trio.SSLStream is handshaken
    first) with the same hypercorn protocol and mended sends as the HTTP listener's."""
    wrapped: Any = wrap_app(app, _STREAM_CONFIG.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    server = _StreamConnection(
        wrapped,
        _STREAM_CONFIG,
        WorkerContext(None),
        ConnectionState({}),
        stream,
        sends=set(),
        client=client,
    )
    await _serve_connection(server, stream)


async def _end_sends_when_cancelled(sends: set[trio.CancelScope]) -> None:
    """When the service is cancelled the shielded sends must end too, or a client that
    stopped reading keeps the node from stopping."""
    try:
        await trio.sleep_forever()
    finally:
        for scope in list(sends):
            scope.cancel()


async def _serve_connection(server: TCPServer, stream: trio.abc.Stream) -> None:
    """Run one connection; whatever fails in it stays in it."""
    try:
        await server.run()
    except* Exception as group:  # a Cancelled beside them still propagates
        errors = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
        log.warning("connection failed; closed", extra={"error": errors})
        await trio.aclose_forcefully(stream)


# A client that takes this long to accept one chunk of a response has stopped reading.
_SEND_STALL_TIMEOUT: Final = 120.0


def _raise_open_files_limit() -> None:
    """Each connection is a file descriptor; a soft limit of 1,024 (the usual default)
    would refuse a burst of clients that the hard limit allows."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
