"""The API pipeline: every /v1 request passes auth -> limits -> route -> forward.

Theory of operation
-------------------
`Gateway.install(router, door=...)` adds one handler per route, at the local door and
the peer door alike (`Gateway.routes` says which route is served where). Each request:

1. is authenticated (API keys, when required) and rate-limited per client;
2. has its body read up to `server.max_body_bytes` (413 past it) and the two fields the
   pipeline needs, `model` and `stream`, decoded without building the rest (a model
   name over MAX_MODEL_NAME, or nesting too deep to skip, is 400);
3. takes a slot of the global in-flight limit (429 when full);
4. is routed: the providers serving the model, healthy and least loaded first; a
   provider at its concurrency limit is skipped; a provider that cannot be connected
   to is marked down and the next one tried — nothing reached the client yet, so this
   is safe. No candidate at all is 404 listing the models that exist;
5. is forwarded. When the engine speaks the client's dialect the bytes pass through
   untouched, chunk by chunk as the engine writes them (SSE included). Otherwise
   `gate.services.gateway.translated` translates (Anthropic <-> OpenAI).

A task per request watches for the client going away and cancels the exchange, which
closes the engine connection: the engine stops generating at once. Errors are answered
in the client's dialect (`ApiError`); an engine that fails after the response started
gets a well-formed error event on a stream, or an aborted connection on a plain body,
never a truncated success. Usage and metrics are recorded when the exchange ends, off
the hot path (UsageRecorder queues; Metrics counts in memory).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any, Final

import msgspec
import trio

from gate.config import P2PConfig, SecurityConfig, ServerConfig
from gate.dialects import SSEDecoder, encode_event
from gate.dialects.errors import (
    anthropic_stream_error,
    openai_stream_error,
)
from gate.protocol import NodeId
from gate.services.control.events import EventBus
from gate.services.engines.client import (
    HOP_BY_HOP,
    StreamedResponse,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
)
from gate.services.engines.registry import Dialect, Provider, ProviderRegistry
from gate.services.engines.tokens import count_prompt_tokens, prompt_text
from gate.services.gateway.exchange import (
    ANSWERABLE,
    API_ROUTES,
    ApiError,
    ApiRoute,
    Exchange,
    api_error,
    decode_request,
    nested_too_deep,
)
from gate.services.gateway.limits import ClientRateLimiter, InFlightLimiter, LimitExceeded
from gate.services.gateway.metrics import UNKNOWN, Metrics
from gate.services.gateway.translated import translate_request, translated_response
from gate.services.http.router import (
    EVERY_DOOR,
    LOCAL_ONLY,
    BodyError,
    Door,
    Receive,
    Route,
    Router,
    Scope,
    Send,
    cancel_on_disconnect,
    read_body,
    send_json,
)
from gate.services.p2p.http_over_stream import request_over_stream
from gate.services.p2p.service import P2PService, PeerState
from gate.services.store.apikeys import ApiKeys, extract_key
from gate.services.store.usage import UsageRecord, UsageRecorder
from gate.services.transport.quic import TransportError

__all__ = ["MAX_MODEL_NAME", "Gateway"]

_MAX_USAGE_SCAN: Final = 8 * 1024 * 1024  # a non-streamed body larger than this is not parsed
# The longest model name a request may carry: generous, since real ids run to tens of
# characters even as `org/repo:quantisation` paths. Unbounded, a name is limited only by
# the body size, and it is kept in usage records and events and echoed in errors.
MAX_MODEL_NAME: Final = 256
# Client headers worth passing to an engine; everything else (the client's Gate key
# above all) stays here.
_FORWARD_REQUEST_HEADERS: Final = frozenset(
    {
        b"content-type",
        b"accept",
        b"user-agent",
        b"openai-beta",
        b"anthropic-beta",
        b"anthropic-version",
        b"x-request-id",
    }
)
# What a request keeps when it goes to a peer: not its Gate key (peers trust node ids),
# not the target header (the peer serves it locally), not the hop-by-hop headers.
_NOT_TO_PEERS: Final = HOP_BY_HOP | {b"authorization", b"x-api-key", b"x-target-node"}
# hypercorn writes its own date header; a second one from the engine would be a duplicate.
_DROP_RESPONSE_HEADERS: Final = HOP_BY_HOP | {b"date"}


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _RequestFields(msgspec.Struct):
    """The only fields the pipeline reads; msgspec skips the rest of the body unparsed."""

    model: str
    stream: bool = False
    stream_options: _StreamOptions | None = None


_decode_fields = msgspec.json.Decoder(_RequestFields).decode


class Gateway:
    def __init__(
        self,
        *,
        registry: ProviderRegistry,
        client: UpstreamClient,
        metrics: Metrics,
        usage: UsageRecorder,
        api_keys: ApiKeys | None,
        server: ServerConfig,
        security: SecurityConfig,
        peers: P2PService | None = None,
        peer_limits: P2PConfig | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.events = events or EventBus()
        self.registry, self.client, self.metrics, self.usage = registry, client, metrics, usage
        self.peers = peers
        self.api_keys = api_keys
        peer_limits = peer_limits or P2PConfig()
        self.in_flight = InFlightLimiter(server.max_in_flight)
        self.rate = ClientRateLimiter(server.client_rate_per_minute, server.client_burst)
        self.peer_rate = ClientRateLimiter(peer_limits.peer_rate_per_minute, peer_limits.peer_burst)
        self.peer_in_flight: dict[str, int] = {}
        self.reconfigure(server, security, peer_limits)

    def reconfigure(self, server: ServerConfig, security: SecurityConfig, peers: P2PConfig) -> None:
        """Take new limits, timeouts and key rules (config reload). Requests in flight
        keep counting against the in-flight limits; rate buckets restart full only when
        their rate changes."""
        self.server, self.security = server, security
        self.in_flight.limit = server.max_in_flight
        self.rate = _with_rate(self.rate, server.client_rate_per_minute, server.client_burst)
        self.peer_rate = _with_rate(self.peer_rate, peers.peer_rate_per_minute, peers.peer_burst)
        self.peer_max_in_flight = peers.peer_max_in_flight

    def routes(self) -> list[Route]:
        """The API's routes, each with the doors it is served at.

        A trusted peer (the peer door) may use the API: every API route, which is what its
        own gateway forwards (by model or X-Target-Node), and the model listing, which
        `gate conformance` and a peer's operator ask for. Not /metrics: its counters name
        this node's engines and measure everyone's traffic, local clients' and other
        peers', which is this node's operator's business; a peer learns the models from
        the capabilities its control stream carries.
        """
        return [
            *(Route("POST", r.path, self._handler(r), EVERY_DOOR) for r in API_ROUTES),
            Route("GET", "/v1/models", self.list_models, EVERY_DOOR),
            Route("GET", "/v1/models/", self.get_model, EVERY_DOOR, prefix=True),
            Route("GET", "/metrics", self.render_metrics, LOCAL_ONLY),
        ]

    def install(self, router: Router, *, door: Door = Door.LOCAL) -> None:
        """Add the routes served at `door` (see `routes`) to that door's router."""
        router.add_routes(self.routes(), door)

    def _handler(self, route: ApiRoute) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            await self.serve(route, scope, receive, send)

        return handle

    # --- the pipeline ---------------------------------------------------------

    async def serve(self, route: ApiRoute, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(route, time.perf_counter())
        responded = _ResponseTracker(send)
        peer_slot: str | None = None
        try:
            exchange.client = self._authenticate(scope)
            if exchange.client.startswith("peer:"):
                self._enter_peer(exchange.client)
                peer_slot = exchange.client
            else:
                _check_rate(self.rate, exchange.client)
            body = await self._read_body(scope, receive)
            fields = self._parse(body)
            exchange.model, exchange.stream = fields.model, fields.stream
            exchange.include_usage = bool(
                fields.stream_options and fields.stream_options.include_usage
            )
            if self.events.subscribers:  # no dict to build when nobody listens
                self.events.publish(
                    "request.start",
                    {
                        "id": id(exchange),
                        "endpoint": route.name,
                        "model": exchange.model,
                        "client": exchange.client,
                        "stream": exchange.stream,
                    },
                )
            if not self.in_flight.try_enter():
                raise LimitExceeded(
                    "global", 1, "Gate is at its limit of concurrent requests; retry shortly"
                )
            try:
                await self._forward(route, scope, receive, body, exchange, responded)
            except* trio.Cancelled:  # grouped: it comes out of _forward's nursery
                await _end_cut_stream(responded, route.dialect, exchange)
                raise
            finally:
                self.in_flight.leave()
        except ANSWERABLE as failure:
            exc = api_error(failure)
            exchange.status, exchange.error = exc.status, exc.message
            if not responded.started:
                await exc.answer(send, route.dialect)
        except _AbortResponse:
            # Returning without the body's last part makes the server drop the connection:
            # the deliberate end of a response that cannot end well, not an error of ours.
            pass
        finally:
            if peer_slot is not None:
                self._leave_peer(peer_slot)
            self._finish(exchange)

    def _enter_peer(self, client: str) -> None:
        """A trusted peer's share of this node: its own rate bucket and in-flight cap."""
        _check_rate(self.peer_rate, client)
        count = self.peer_in_flight.get(client, 0)
        if self.peer_max_in_flight and count >= self.peer_max_in_flight:
            raise LimitExceeded(
                "client",
                1,
                f"{client} has {count} requests in flight, the most this node takes from one peer",
            )
        self.peer_in_flight[client] = count + 1

    def _leave_peer(self, client: str) -> None:
        count = self.peer_in_flight.get(client, 1) - 1
        if count:
            self.peer_in_flight[client] = count
        else:
            self.peer_in_flight.pop(client, None)

    async def _forward(
        self,
        route: ApiRoute,
        scope: Scope,
        receive: Receive,
        body: bytes,
        exchange: Exchange,
        response: _ResponseTracker,
    ) -> None:
        """Route and relay, cancelled at once if the client disconnects."""
        failure: Exception | None = None
        send = response.send
        async with trio.open_nursery() as nursery:
            left = functools.partial(_client_left, exchange, response)
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope, left)
            # Errors are caught inside the nursery so they leave it as themselves, not
            # wrapped in an ExceptionGroup.
            try:
                await self._route(route, scope, body, exchange, send)
            except _ENDINGS as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _authenticate(self, scope: Scope) -> str:
        """The client's identity: its API key id, or its address when keys are optional.

        A request from a trusted peer (its stream was authorized by node id) is that peer.
        """
        peer = scope.get("extensions", {}).get("gate.peer")
        if peer is not None:
            return f"peer:{peer}"
        key = extract_key(scope["headers"])
        info = self.api_keys.verify(key) if key and self.api_keys else None
        if info is not None:
            return info.id
        if self.security.require_api_keys:
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer or x-api-key)")
        client = scope.get("client")
        return str(client[0]) if client else "local"

    def authorized(self, scope: Scope) -> bool:
        """Whether this caller would pass `_authenticate` (a key, a peer, or none needed)."""
        try:
            self._authenticate(scope)
        except ApiError:
            return False
        return True

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        try:
            return await read_body(
                scope,
                receive,
                limit=self.server.max_body_bytes,
                timeout=self.server.body_timeout,
            )
        except BodyError as exc:
            raise api_error(exc) from None

    @staticmethod
    def _parse(body: bytes) -> _RequestFields:
        try:
            fields = _decode_fields(body)
        except msgspec.ValidationError as exc:
            raise ApiError(400, f"invalid request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        except RecursionError:  # skipping the fields it does not read recurses too
            raise nested_too_deep() from None
        if len(fields.model) > MAX_MODEL_NAME:
            raise ApiError(400, f"model: a model name is at most {MAX_MODEL_NAME} characters long")
        return fields

    async def _route(
        self, route: ApiRoute, scope: Scope, body: bytes, exchange: Exchange, send: Send
    ) -> None:
        from_peer = scope.get("extensions", {}).get("gate.peer")
        if from_peer is not None:
            exchange.peer = from_peer
        elif self.peers is not None:  # never forward what a peer sent us: no loops
            target = _header(scope, b"x-target-node")
            if target is not None:
                peer = self._target_peer(target.decode("latin-1"))
                if peer is not None:
                    await self._forward_to_peer(route, scope, body, exchange, send, peer)
                    return
        candidates = self.registry.serving(exchange.model)
        if not candidates and from_peer is None and self.peers is not None:
            serving = self.peers.peers_serving(exchange.model)
            if serving:
                await self._forward_to_peer(route, scope, body, exchange, send, serving[0])
                return
        if not candidates:
            known = sorted(self._all_models())
            listing = ", ".join(known) if known else "none (no engine is reachable)"
            raise ApiError(
                404,
                f"model {exchange.model!r} is not served here; available models: {listing}",
                code="model_not_found",
            )
        exchange.model_label = self.registry.aliases.get(exchange.model, exchange.model)
        if route.name == "messages.count_tokens" and candidates[0].dialect is Dialect.OPENAI:
            await self._count_tokens(candidates[0], body, exchange, send)
            return
        able = [p for p in candidates if route.engine_path(p.dialect) is not None]
        if not able:
            raise ApiError(
                400,
                f"model {exchange.model!r} is served only by engines without {route.path}",
            )
        upstream, provider = await self._connect(route, scope, body, able, exchange)
        provider.in_flight += 1
        self.metrics.request_started(provider.name, exchange.model_label)
        exchange.metered = True
        try:
            async with upstream:
                exchange.status = upstream.status
                if provider.dialect is route.dialect:
                    await self._pass_through(upstream, send, exchange, route.dialect)
                else:
                    await translated_response(route, provider)(upstream, send, exchange)
        finally:
            provider.in_flight -= 1

    async def _connect(
        self,
        route: ApiRoute,
        scope: Scope,
        body: bytes,
        candidates: list[Provider],
        exchange: Exchange,
    ) -> tuple[UpstreamResponse, Provider]:
        """Send the request to the first provider that takes it; fail over on connect errors."""
        client_headers = [(k, v) for k, v in scope["headers"] if k in _FORWARD_REQUEST_HEADERS]
        failures: list[str] = []
        for provider in candidates:
            if provider.full:
                failures.append(f"{provider.name}: at its concurrency limit")
                continue
            path = route.engine_path(provider.dialect)
            assert path is not None
            payload = body
            if provider.dialect is not route.dialect:
                payload = translate_request(route, provider, body)
            headers = _merge_headers(client_headers, provider.auth_headers)
            exchange.provider = provider.name
            try:
                upstream = await self.client.request(
                    "POST",
                    provider.url(path),
                    headers=headers,
                    body=payload,
                    response_timeout=self.server.response_timeout,
                    read_timeout=self.server.stream_idle_timeout,
                )
            except UpstreamConnectError as exc:
                provider.healthy, provider.last_error = False, str(exc)
                failures.append(f"{provider.name}: {exc}")
                continue
            except UpstreamError as exc:
                raise api_error(exc, f"engine {provider.name}") from None
            return upstream, provider
        if all("concurrency limit" in failure for failure in failures):
            raise LimitExceeded("provider", 1, f"every engine serving {exchange.model!r} is busy")
        raise ApiError(
            503, f"no engine serving {exchange.model!r} is reachable: " + "; ".join(failures)
        )

    def _target_peer(self, text: str) -> PeerState | None:
        """The peer X-Target-Node names; None when it names this node (served here)."""
        assert self.peers is not None
        try:
            node_id = NodeId.parse(text)
        except ValueError:
            raise ApiError(400, f"X-Target-Node: {text[:80]!r} is not a node id") from None
        if node_id == self.peers.node_id:
            return None
        peer = self.peers.peer(node_id)
        if peer is None:
            raise ApiError(
                404,
                f"X-Target-Node: {node_id} is not a trusted peer of this node",
                code="peer_not_found",
            )
        if not peer.connected:
            raise ApiError(
                503,
                f"X-Target-Node: peer {node_id} is not reachable now "
                f"({type(peer.status).__name__.lower()})",
            )
        return peer

    async def _forward_to_peer(
        self,
        route: ApiRoute,
        scope: Scope,
        body: bytes,
        exchange: Exchange,
        send: Send,
        peer: PeerState,
    ) -> None:
        """Send the request to a peer over an HttpProxy stream; relay its answer."""
        assert self.peers is not None
        exchange.provider = exchange.peer = str(peer.node_id)
        exchange.model_label = self._model_label(exchange.model)
        headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_TO_PEERS]
        target = scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        self.metrics.request_started(exchange.provider, exchange.model_label)
        exchange.metered = True
        with self.peers.request_to(peer):
            try:
                stream = await self.peers.open_http_stream(peer)
                response = await request_over_stream(
                    stream,
                    method=scope["method"],
                    target=target,
                    headers=headers,
                    body=body,
                    peer=str(peer.node_id),
                    response_timeout=self.server.response_timeout,
                    read_timeout=self.server.stream_idle_timeout,
                )
            except TransportError as exc:
                raise api_error(exc, f"peer {peer.node_id}") from None
            except UpstreamError as exc:  # its message names the peer
                raise api_error(exc) from None
            async with response:
                exchange.status = response.status
                await self._pass_through(response, send, exchange, route.dialect)

    def _model_label(self, model: str) -> str:
        """The metrics label for `model`: the model as routed when it exists here or at a
        peer, else UNKNOWN, so that clients cannot mint label values (each one a series
        kept in memory and written out on every scrape)."""
        resolved = self.registry.aliases.get(model, model)
        if any(resolved in provider.models for provider in self.registry.providers):
            return resolved
        if self.peers is not None and self.peers.peers_serving(model):
            return model
        return UNKNOWN

    def _all_models(self) -> dict[str, list[str]]:
        models = self.registry.model_ids()
        if self.peers is not None:
            for model, owners in self.peers.peer_models().items():
                models.setdefault(model, []).extend(owners)
        return models

    async def _count_tokens(
        self, provider: Provider, body: bytes, exchange: Exchange, send: Send
    ) -> None:
        """count_tokens for an engine that is not Anthropic's (see gate.services.engines.tokens)."""
        request = decode_request(body)
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise ApiError(400, "messages: required, a list of messages")
        exchange.provider = provider.name
        count, exact = await count_prompt_tokens(
            self.client,
            provider,
            exchange.model,
            prompt_text(request),
            self.server.response_timeout,
        )
        exchange.status, exchange.tokens_in = 200, count
        header = (b"x-gate-token-count", b"engine" if exact else b"estimate")
        await send_json(send, 200, {"input_tokens": count}, [header])

    async def _pass_through(
        self,
        upstream: StreamedResponse,
        send: Send,
        exchange: Exchange,
        dialect: Dialect,
    ) -> None:
        """The engine speaks the client's dialect: relay its bytes as they arrive."""
        content_type = upstream.header(b"content-type") or b""
        streaming = content_type.startswith(b"text/event-stream")
        length = None if streaming else upstream.content_length
        headers = [(k, v) for k, v in upstream.headers if k not in _DROP_RESPONSE_HEADERS]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        tap = _UsageTap(dialect, streaming) if upstream.status < 400 else None
        remaining = length
        try:
            async with aclosing(upstream.aiter_body()) as body_chunks:
                async for chunk in body_chunks:
                    exchange.first_byte()
                    if tap is not None:
                        tap.feed(chunk)
                    if remaining is not None:
                        remaining -= len(chunk)
                        await send(
                            {
                                "type": "http.response.body",
                                "body": chunk,
                                "more_body": remaining > 0,
                            }
                        )
                    else:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            exchange.status, exchange.error = 502, f"engine failed mid-response: {exc}"
            if not streaming:
                raise _AbortResponse from None  # the client sees a broken body, not a short one
            await send(
                {
                    "type": "http.response.body",
                    "body": _stream_error(dialect, exc),
                    "more_body": False,
                }
            )
            return
        if remaining is None or remaining > 0 or length == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if tap is not None:
            exchange.tokens_in, exchange.tokens_out = tap.result()

    def _finish(self, exchange: Exchange) -> None:
        latency = time.perf_counter() - exchange.started
        provider = exchange.provider or "none"
        model = exchange.model_label or (
            self._model_label(exchange.model) if exchange.model else "none"
        )
        self.metrics.request_finished(
            provider,
            model,
            exchange.route.name,
            exchange.status,
            latency,
            exchange.ttft,
            exchange.tokens_in,
            exchange.tokens_out,
            _error_type(exchange.status) if exchange.status >= 400 else None,
            in_flight=exchange.metered,  # only a request that reached a provider was counted
        )
        if self.events.subscribers:
            self.events.publish(
                "request.end",
                {
                    "id": id(exchange),
                    "endpoint": exchange.route.name,
                    "model": exchange.model,
                    "client": exchange.client,
                    "provider": exchange.provider,
                    "peer": exchange.peer,
                    "status": exchange.status,
                    "latency_ms": round(latency * 1000, 3),
                    "ttft_ms": None if exchange.ttft is None else round(exchange.ttft * 1000, 3),
                    "tokens_in": exchange.tokens_in,
                    "tokens_out": exchange.tokens_out,
                    "error": exchange.error,
                },
            )
        self.usage.record(
            UsageRecord(
                ts=time.time(),
                client=exchange.client,
                model=exchange.model,
                provider=exchange.provider,
                peer=exchange.peer,
                status=exchange.status,
                latency_ms=latency * 1000,
                ttft_ms=None if exchange.ttft is None else exchange.ttft * 1000,
                tokens_in=exchange.tokens_in,
                tokens_out=exchange.tokens_out,
                error=exchange.error,
                endpoint=exchange.route.name,
            )
        )

    # --- models and metrics ----------------------------------------------------

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._authenticate(scope)
        except ApiError as exc:
            await exc.answer(send, _dialect_of(scope))
            return
        models = self._all_models()
        if _dialect_of(scope) is Dialect.ANTHROPIC:
            data = [_anthropic_model(model) for model in sorted(models)]
            await send_json(
                send,
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                },
            )
            return
        await send_json(
            send,
            200,
            {
                "object": "list",
                "data": [_openai_model(model, owners) for model, owners in sorted(models.items())],
            },
        )

    async def get_model(self, scope: Scope, receive: Receive, send: Send) -> None:
        dialect = _dialect_of(scope)
        try:
            self._authenticate(scope)
        except ApiError as exc:
            await exc.answer(send, dialect)
            return
        model = scope["path"].removeprefix("/v1/models/")
        owners = self._all_models().get(model)
        if owners is None:
            error = ApiError(404, f"model {model!r} is not served here", code="model_not_found")
            await error.answer(send, dialect)
        elif dialect is Dialect.ANTHROPIC:
            await send_json(send, 200, _anthropic_model(model))
        else:
            await send_json(send, 200, _openai_model(model, owners))

    async def render_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._authenticate(scope)
        except ApiError as exc:
            await exc.answer(send, Dialect.OPENAI)
            return
        body = self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _AbortResponse(Exception):
    """Raised after the response started and cannot end well: the server drops the
    connection, so a client reading a Content-Length body sees it cut off, not complete."""


# How `_route` may end other than by success: an answer, or a deliberately cut response.
_ENDINGS: Final[tuple[type[Exception], ...]] = (*ANSWERABLE, _AbortResponse)


class _ResponseTracker:
    """Wraps `send` to know how far the response got: once its head went out, errors
    cannot be answered with a status; once its last body part went out, the server
    closes the request, and the http.disconnect that follows is not a client leaving."""

    __slots__ = ("_send", "finished", "started", "streaming")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False
        self.streaming = False  # the response is a server-sent event stream

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.streaming = any(
                name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                for name, value in message.get("headers", ())
            )
        elif kind == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


async def _end_cut_stream(response: _ResponseTracker, dialect: Dialect, exchange: Exchange) -> None:
    """The node is stopping and its drain time ran out mid-stream: end the stream with an
    error event in the client's dialect, so the client sees a failure, not a cut
    connection it may take for a network fault. (A client that left cancels inside
    `_forward`, so this runs only for a cancellation from outside: the shutdown.)"""
    if response.finished:
        return
    exchange.status, exchange.error = 503, "cut short: Gate is shutting down"
    if not response.streaming:
        return  # a body with a length: the cut connection tells the client already
    with trio.move_on_after(_LAST_WORD_TIMEOUT, shield=True):
        await response.send(
            {
                "type": "http.response.body",
                "body": _stream_error(dialect, exchange.error),
                "more_body": False,
            }
        )


# How long a cancelled stream may take to write its closing error event.
_LAST_WORD_TIMEOUT: Final = 1.0


def _check_rate(limiter: ClientRateLimiter, client: str) -> None:
    """Admit one request from `client` or refuse it (LimitExceeded, with the wait)."""
    wait = limiter.check(client, time.monotonic())
    if wait > 0:
        raise LimitExceeded("client", wait, f"rate limit for {client} exceeded")


def _with_rate(limiter: ClientRateLimiter, per_minute: float, burst: int) -> ClientRateLimiter:
    """`limiter` itself when its rate is unchanged (its buckets keep their debts)."""
    if (limiter.rate_per_minute, limiter.burst) == (float(per_minute), burst):
        return limiter
    return ClientRateLimiter(per_minute, burst)


def _client_left(exchange: Exchange, response: _ResponseTracker) -> bool:
    """Whether an http.disconnect means the client left (the exchange is then cut short):
    not once the response is complete."""
    if response.finished:
        return False
    exchange.error = "client disconnected"
    if exchange.status < 400:
        exchange.status = 499  # nginx's code for "client closed request"
    return True


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _merge_headers(
    client: list[tuple[bytes, bytes]], provider: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The provider's credentials and version headers win over the client's."""
    names = {name for name, _ in provider}
    return [*provider, *((k, v) for k, v in client if k not in names)]


def _stream_error(dialect: Dialect, failure: Exception | str) -> bytes:
    """An error event ending a stream; `failure` is the engine's error or the message."""
    message = failure if isinstance(failure, str) else f"the engine failed mid-stream: {failure}"
    if dialect is Dialect.ANTHROPIC:
        name, data = anthropic_stream_error(message)
        return encode_event(msgspec.json.encode(data), name)
    return encode_event(msgspec.json.encode(openai_stream_error(message)))


def _error_type(status: int) -> str:
    return {
        400: "invalid_request",
        401: "unauthorized",
        404: "not_found",
        413: "too_large",
        429: "rate_limited",
        499: "client_closed",
        502: "bad_gateway",
        503: "unavailable",
        504: "timeout",
    }.get(status, "server_error" if status >= 500 else "client_error")


def _dialect_of(scope: Scope) -> Dialect:
    """Anthropic's SDK always sends anthropic-version; OpenAI's never does."""
    for name, _ in scope["headers"]:
        if name == b"anthropic-version":
            return Dialect.ANTHROPIC
    return Dialect.OPENAI


def _openai_model(model: str, owners: list[str]) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": ",".join(owners)}


def _anthropic_model(model: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model,
        "display_name": model,
        "created_at": "1970-01-01T00:00:00Z",
    }


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None  # OpenAI
    completion_tokens: int | None = None
    input_tokens: int | None = None  # Anthropic
    output_tokens: int | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _WithUsage(msgspec.Struct):
    """Just enough of a response, chunk or event to count tokens."""

    usage: _Usage | None = None
    message: _WithUsage | None = None  # Anthropic's message_start nests it
    choices: list[_Choice] = []  # OpenAI stream chunks


_decode_usage = msgspec.json.Decoder(_WithUsage).decode


class _UsageTap:
    """Reads token counts off a relayed response without holding it up.

    A non-streamed body is kept (up to a bound) and its `usage` decoded at the end. On a
    stream each event is decoded into a struct of the few fields that matter; when the
    engine reports no usage (an OpenAI stream without include_usage), the chunks that
    carry content or tool-call deltas are counted instead: one per token on the engines
    Gate fronts.
    """

    __slots__ = ("_body", "_decoder", "_size", "_tokens_seen", "tokens_in", "tokens_out")

    def __init__(self, dialect: Dialect, streaming: bool) -> None:
        self._decoder = SSEDecoder() if streaming else None
        self._body: list[bytes] = []
        self._size = 0
        self._tokens_seen = 0
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None

    def feed(self, chunk: bytes) -> None:
        if self._decoder is None:
            self._size += len(chunk)
            if self._size <= _MAX_USAGE_SCAN:
                self._body.append(chunk)
            return
        for event in self._decoder.feed(chunk):
            if event.data and event.data != "[DONE]":
                self._take(event.data)

    def _take(self, data: str | bytes) -> None:
        try:
            parsed = _decode_usage(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return  # not for us to judge: the client gets the engine's bytes as they are
        for choice in parsed.choices:
            delta = choice.delta
            if delta is not None and (delta.content or delta.tool_calls):
                self._tokens_seen += 1
        usage = parsed.usage or (parsed.message.usage if parsed.message else None)
        if usage is None:
            return
        tokens_in = usage.prompt_tokens if usage.prompt_tokens is not None else usage.input_tokens
        tokens_out = (
            usage.completion_tokens if usage.completion_tokens is not None else usage.output_tokens
        )
        self.tokens_in = tokens_in if tokens_in is not None else self.tokens_in
        self.tokens_out = tokens_out if tokens_out is not None else self.tokens_out

    def result(self) -> tuple[int | None, int | None]:
        if self._decoder is None and self._body and self._size <= _MAX_USAGE_SCAN:
            self._take(b"".join(self._body))
        if self.tokens_out is None and self._tokens_seen:
            return self.tokens_in, self._tokens_seen
        return self.tokens_in, self.tokens_out
