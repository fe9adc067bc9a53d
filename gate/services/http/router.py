"""A minimal ASGI router for the API's hot path.

Why not a framework here: every request to Gate's API passes through this code, and
its latency budget is tight. On the same server, a framework's layers cost a large
share of the requests per second that a bare ASGI app serves, and importing quart-trio
alone uses up most of the start-up target (the README's Benchmarks has the figures).
Routes are an exact-match dict, so dispatch is one lookup. The control plane
and the web UI are served by the same router: a handful of routes each, which a
framework would not make shorter.

Each door into the node has a router of its own, built where the door is built: the
HTTP listener's (`Door.LOCAL`) serves everything; the one trusted peers' HttpProxy
streams reach (`Door.PEER`) and the one a relay's tls_proxy streams reach (`Door.RELAY`:
anyone on the internet, TLS ended by this node) hold only the routes declared for them
(`Route.doors`); `tls.listen` serves the relay door's router as a door of its own
(`Door.TLS`), so that the usage log tells the two apart. A path missing from a door's
router is a plain 404 there, as if it did not exist; no check runs per request. A
request on a door other than the local one carries it in
`scope["extensions"]["gate.door"]` (`with_door`, or set by the peer stream's scope);
`door_of` reads it, and the usage log records it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, NamedTuple, Protocol

import msgspec
import trio

__all__ = [
    "EVERY_DOOR",
    "LOCAL_ONLY",
    "PEER_ONLY",
    "PUBLIC_DOORS",
    "REMOTE_DOORS",
    "ASGIApp",
    "Alarm",
    "BodyError",
    "Door",
    "Handler",
    "Route",
    "Router",
    "cancel_on_disconnect",
    "door_of",
    "read_body",
    "send_json",
    "with_door",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
ASGIApp = Handler

_json_encode = msgspec.json.Encoder().encode
log = logging.getLogger("gate.http")


async def send_json(
    send: Send,
    status: int,
    body: object,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = _json_encode(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyError(Exception):
    """The request body could not be read whole: the status to answer and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# The deadline is part of the answer (408 names it), so it is an argument, not a scope.
async def read_body(
    scope: Scope,
    receive: Receive,
    *,
    limit: int,
    timeout: float,  # noqa: ASYNC109
) -> bytes:
    """The whole request body, at most `limit` bytes, all of it within `timeout` seconds.

    The deadline covers the whole body, not each read: a client that trickles a byte at
    a time would otherwise hold its connection (and a file descriptor) for ever.
    BodyError: 413 too large, 408 too slow, 499 the client left first.
    """
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise BodyError(413, f"request body over the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    with trio.move_on_after(timeout):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BodyError(499, "client went away before sending its request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"request body over the limit of {limit} bytes")
            parts.append(chunk)
            if not message.get("more_body"):
                return parts[0] if len(parts) == 1 else b"".join(parts)
    raise BodyError(408, f"request body not received within {timeout:g}s")


class Door(enum.Enum):
    """Where a request comes in; each door has its own Router."""

    LOCAL = "local"  # the HTTP listener: programs on this machine, holders of an API key
    PEER = "peer"  # HttpProxy streams from trusted peers (gate.services.p2p)
    # tls_proxy streams from a relay this node registered with: the public internet.
    # An API key is always required there, whatever server.bind is.
    RELAY = "relay"
    # `tls.listen`: the relay door's TLS and router on a TCP port of the node, no relay
    # in between (a LAN, an SNI router of your own); the same rules as RELAY.
    TLS = "tls"


EVERY_DOOR: Final = frozenset(Door)
LOCAL_ONLY: Final = frozenset({Door.LOCAL})
PEER_ONLY: Final = frozenset({Door.PEER})
REMOTE_DOORS: Final = frozenset({Door.PEER, Door.RELAY, Door.TLS})
# The doors anyone may reach (a relay's or the node's own TLS port): a key always.
PUBLIC_DOORS: Final = frozenset({Door.RELAY, Door.TLS})


def door_of(scope: Scope) -> Door:
    """The door a request came through (no mark: the local listener's)."""
    door = scope.get("extensions", {}).get("gate.door")
    return door if isinstance(door, Door) else Door.LOCAL


def with_door(app: ASGIApp, door: Door) -> ASGIApp:
    """`app` with every request marked as arriving through `door`."""

    async def marked(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("extensions", {})["gate.door"] = door
        await app(scope, receive, send)

    return marked


class Route(NamedTuple):
    """A route and the doors it is served at: its declaration, not a check at run time."""

    method: str
    path: str
    handler: Handler
    doors: frozenset[Door]
    prefix: bool = False  # every path under `path` (e.g. /v1/models/{id}); see add_prefix


class Alarm(Protocol):
    """Something to do at a time that may move while `cancel_on_disconnect` waits."""

    def waiting(self) -> trio.CancelScope:
        """A scope whose deadline is the alarm's, kept current while it is waited in."""

    async def ring(self) -> None:
        """The deadline passed: do what is due, and set the next deadline (or none)."""


async def cancel_on_disconnect(
    receive: Receive,
    scope: trio.CancelScope,
    left: Callable[[], bool] | None = None,
    alarm: Alarm | None = None,
) -> None:
    """Cancel `scope` when the client goes away: after the request body, the next ASGI
    message is http.disconnect. `left`, if given, is told first and says whether to
    cancel (False: the response was complete, and the server's disconnect that follows
    is a matter of course). `alarm`, if given, rings whenever its deadline passes while
    this waits: the request's one task beside its handler does both, as a task of its
    own for a timer would cost each request a task (ASGI's receive is a memory channel's,
    which a cancelled wait leaves as it was)."""
    while True:
        if alarm is None:
            message = await receive()
        else:
            with alarm.waiting() as waited:
                message = await receive()
            if waited.cancelled_caught:
                await alarm.ring()
                continue
        if message["type"] == "http.disconnect":
            break
    if left is None or left():
        scope.cancel()


class Router:
    """Dispatches (method, path) to a handler; answers 404/405 itself."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._routes.setdefault(path, {})[method.upper()] = handler

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        """Route every path under `prefix` (e.g. /v1/models/{id}); exact routes win."""
        for existing, methods in self._prefixes:
            if existing == prefix:
                methods[method.upper()] = handler
                return
        self._prefixes.append((prefix, {method.upper(): handler}))

    def add_routes(self, routes: Iterable[Route], door: Door) -> None:
        """Add the routes served at `door`; the others are not there at all."""
        for route in routes:
            if door in route.doors:
                add = self.add_prefix if route.prefix else self.add
                add(route.method, route.path, route.handler)

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def decorator(handler: Handler) -> Handler:
            self.add(method, path, handler)
            return handler

        return decorator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            methods = self._routes.get(path)
            if methods is None:
                methods = next(
                    (
                        m
                        for prefix, m in self._prefixes
                        if path.startswith(prefix) and path != prefix
                    ),
                    None,
                )
            if methods is None:
                await send_json(send, 404, {"error": {"message": "not found", "type": "not_found"}})
                return
            handler = methods.get(scope["method"])
            if handler is None:
                allow = ", ".join(sorted(methods)).encode()
                await send_json(
                    send,
                    405,
                    {"error": {"message": "method not allowed", "type": "invalid_request"}},
                    [(b"allow", allow)],
                )
                return
            await handler(scope, receive, send)
        # websocket and other scope types: not served; the server closes them. (No
        # lifespan either: Gate's accept loop, gate.services.http.server, sends none.)
