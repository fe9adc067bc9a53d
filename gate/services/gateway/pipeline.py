"""The API pipeline: every /v1 request passes auth -> limits -> route -> forward.

Theory of operation
-------------------
`Gateway.install(router, door=...)` adds one handler per route, at the local door and
the peer door alike (`Gateway.routes` says which route is served where). Each request:

1. is authenticated (API keys, when required) and rate-limited per client; a trusted
   peer has its own rate and in-flight cap (`limits.PeerLimiter`);
2. has its body read up to `server.max_body_bytes` (413 past it) and the two fields the
   pipeline needs, `model` and `stream`, decoded without building the rest (a model
   name over MAX_MODEL_NAME, or nesting too deep to skip, is 400);
3. takes a slot of the global in-flight limit (429 when full);
4. is routed: to the peer X-Target-Node names, else to the providers serving the model,
   healthy and least loaded first; a provider at its concurrency limit is skipped; a
   provider that cannot be connected to is marked down and the next one tried — nothing
   reached the client yet, so this is safe. A model no engine here serves goes to a peer
   serving it (`peers.PeerForwarding`); no candidate at all is 404 listing the models
   that exist;
5. is forwarded. When the engine speaks the client's dialect the bytes pass through
   untouched, chunk by chunk as the engine writes them (SSE included; `relay`).
   Otherwise `gate.services.gateway.translated` translates (Anthropic <-> OpenAI, and
   the Responses API for engines without it: `responses_api` decides), and an Anthropic
   count_tokens for an OpenAI engine is answered here (`count_tokens`).

A task per request watches for the client going away and cancels the exchange, which
closes the engine connection: the engine stops generating at once. Errors are answered
in the client's dialect (`ApiError`); an engine that fails after the response started
gets a well-formed error event and then an aborted connection on a stream (no
terminating chunk), or an aborted connection on a plain body: never a completed success.
An engine's error status is answered with that status in the client's dialect. Usage
and metrics are recorded when the exchange ends, off the hot path (UsageRecorder
queues; Metrics counts in memory). The GET routes, the model listing and /metrics, are
`listing.Listing`'s.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import trio

from gate.config import P2PConfig, SecurityConfig, ServerConfig
from gate.services.control.events import EventBus
from gate.services.engines.client import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
)
from gate.services.engines.registry import Dialect, Provider, ProviderRegistry
from gate.services.gateway.count_tokens import count_tokens
from gate.services.gateway.exchange import (
    ANSWERABLE,
    API_ROUTES,
    ApiError,
    ApiRoute,
    Exchange,
    Translation,
    api_error,
    decode_request,
    nested_too_deep,
)
from gate.services.gateway.keepalive import EarlyOpening, keepalive_for
from gate.services.gateway.limits import (
    ClientRateLimiter,
    InFlightLimiter,
    LimitExceeded,
    PeerLimiter,
)
from gate.services.gateway.listing import Listing
from gate.services.gateway.metrics import UNKNOWN, Metrics
from gate.services.gateway.peers import PeerForwarding
from gate.services.gateway.response import (
    AbortResponse,
    ResponseTracker,
    end_cut_stream,
    end_stream_with_error,
    pass_through,
)
from gate.services.gateway.responses_api import CHAT_PATH, ResponsesBridge
from gate.services.gateway.stream_usage import ask_for_usage, count_unreported
from gate.services.gateway.translated import (
    count_translated_prompt,
    decode_object,
    stream_head,
    translate_request,
    translated_response,
)
from gate.services.http.router import (
    EVERY_DOOR,
    LOCAL_ONLY,
    PUBLIC_DOORS,
    BodyError,
    Door,
    Receive,
    Route,
    Router,
    Scope,
    Send,
    cancel_on_disconnect,
    door_of,
    read_body,
)
from gate.services.p2p.service import P2PService
from gate.services.store.apikeys import KEY_PREFIX, ApiKeys, extract_key
from gate.services.store.usage import UsageRecord, UsageRecorder

__all__ = ["MAX_MODEL_NAME", "Gateway"]

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


# The kinds of engine that run on the user's side, on their machine or network.
_LOCAL_KINDS: Final = frozenset({"llamacpp", "ollama", "lmstudio", "vllm"})
# Local engine kinds told the reply's cap as `max_tokens` as well as by the newer
# `max_completion_tokens` (what OpenAI's SDK documents, and what langchain-openai sends
# for `max_tokens`): llama.cpp's servers ignore the newer name, and an uncapped reply
# runs to the context's end. The OpenAI API itself is not among them (its reasoning
# models refuse `max_tokens`), nor `openai_compatible`, which may be any server.
_MAX_TOKENS_ONLY_KINDS: Final = _LOCAL_KINDS


def _with_max_tokens(body: bytes) -> bytes:
    """A chat request with `max_completion_tokens` and no `max_tokens`, given `max_tokens`
    the same value; any other body as it came, byte for byte."""
    if b'"max_completion_tokens"' not in body:  # the common case: nothing decoded
        return body
    request = decode_request(body)
    if (
        not isinstance(request, dict)
        or request.get("max_completion_tokens") is None
        or request.get("max_tokens") is not None
    ):
        return body
    request["max_tokens"] = request["max_completion_tokens"]
    return msgspec.json.encode(request)


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
        self.peer_limiter = PeerLimiter(
            peer_limits.peer_rate_per_minute, peer_limits.peer_burst, peer_limits.peer_max_in_flight
        )
        self.to_peers = (
            PeerForwarding(peers, metrics, self._model_label) if peers is not None else None
        )
        self.listing = Listing(registry, peers, metrics, self._authenticate)
        self.responses = ResponsesBridge()
        self.reconfigure(server, security, peer_limits)

    def reconfigure(self, server: ServerConfig, security: SecurityConfig, peers: P2PConfig) -> None:
        """Take new limits, timeouts and key rules (config reload). Requests in flight
        keep counting against the in-flight limits; rate buckets restart full only when
        their rate changes."""
        self.server, self.security = server, security
        self.in_flight.limit = server.max_in_flight
        self.rate = self.rate.with_rate(server.client_rate_per_minute, server.client_burst)
        self.peer_limiter.reconfigure(
            peers.peer_rate_per_minute, peers.peer_burst, peers.peer_max_in_flight
        )

    @property
    def peer_max_in_flight(self) -> int:
        """The most requests this node takes from one peer at once (0: no limit)."""
        return self.peer_limiter.max_in_flight

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
            Route("GET", "/v1/models", self.listing.list_models, EVERY_DOOR),
            Route("GET", "/v1/models/", self.listing.get_model, EVERY_DOOR, prefix=True),
            Route("GET", "/metrics", self.listing.render_metrics, LOCAL_ONLY),
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
        exchange = Exchange(route, time.perf_counter(), keepalive=self.server.stream_keepalive)
        responded = ResponseTracker(send)
        peer_slot: str | None = None
        try:
            exchange.door = door_of(scope).value
            exchange.client = self._authenticate(scope)
            if exchange.client.startswith("peer:"):
                self.peer_limiter.enter(exchange.client, time.monotonic())
                peer_slot = exchange.client
            else:
                self.rate.admit(exchange.client, time.monotonic())
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
                        "door": exchange.door,
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
                await end_cut_stream(responded, route.dialect, exchange)
                raise
            finally:
                self.in_flight.leave()
        except ANSWERABLE as failure:
            exc = api_error(failure)
            exchange.status, exchange.error = exc.status, exc.message
            if not responded.started:
                await exc.answer(send, route.dialect)
            else:  # a stream opened before its engine answered (gateway.keepalive)
                await end_stream_with_error(responded, route.dialect, exc.message, exc.status)
        except AbortResponse:
            # Returning without the body's last part makes the server drop the connection:
            # the deliberate end of a response that cannot end well, not an error of ours.
            pass
        finally:
            if peer_slot is not None:
                self.peer_limiter.leave(peer_slot)
            self._finish(exchange)

    async def _forward(
        self,
        route: ApiRoute,
        scope: Scope,
        receive: Receive,
        body: bytes,
        exchange: Exchange,
        response: ResponseTracker,
    ) -> None:
        """Route and relay, cancelled at once if the client disconnects."""
        failure: Exception | None = None
        send = response.send
        opening = EarlyOpening(send)  # armed by _route for a stream that may open early
        async with trio.open_nursery() as nursery:
            left = functools.partial(_client_left, exchange, response)
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope, left, opening)
            # Errors are caught inside the nursery so they leave it as themselves, not
            # wrapped in an ExceptionGroup.
            try:
                await self._route(route, scope, body, exchange, send, opening)
            except _ENDINGS as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _authenticate(self, scope: Scope) -> str:
        """The client's identity: its API key id, or its address when keys are optional.

        A request from a trusted peer (its stream was authorized by node id) is that peer.
        Through a relay or on `tls.listen` (`PUBLIC_DOORS`) a key is always required. A
        Gate key (`gk_...`) that is wrong or revoked is refused (401) even when keys are
        optional: its sender means to be that key's client and should hear that it is
        not. Any other value (the "unused" an SDK needs) is no key at all.
        """
        extensions = scope.get("extensions", {})
        peer = extensions.get("gate.peer")
        if peer is not None:
            return f"peer:{peer}"
        key = extract_key(scope["headers"])
        info = self.api_keys.verify(key) if key and self.api_keys else None
        if info is not None:
            return info.id
        if (
            self.security.require_api_keys
            or (key and key.startswith(KEY_PREFIX))
            # Through a relay, anyone on the internet: a key always (spec §7.4); on the
            # node's own TLS port too.
            or door_of(scope) in PUBLIC_DOORS
        ):
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
        self,
        route: ApiRoute,
        scope: Scope,
        body: bytes,
        exchange: Exchange,
        send: Send,
        opening: EarlyOpening,
    ) -> None:
        from_peer = scope.get("extensions", {}).get("gate.peer")
        if from_peer is not None:
            exchange.peer = from_peer
        elif self.to_peers is not None:  # never forward what a peer sent us: no loops
            target = _header(scope, b"x-target-node")
            if target is not None:
                peer = self.to_peers.target(target.decode("latin-1"))
                if peer is not None:
                    await self.to_peers.forward(
                        route, scope, body, exchange, send, peer, self.server
                    )
                    return
        candidates = self.registry.serving(exchange.model)
        if not candidates and from_peer is None and self.to_peers is not None:
            peer = self.to_peers.serving(exchange.model)
            if peer is not None:
                await self.to_peers.forward(route, scope, body, exchange, send, peer, self.server)
                return
        if not candidates:
            raise self.listing.unknown_model(exchange.model)
        exchange.model_label = self.registry.aliases.get(exchange.model, exchange.model)
        if route.name == "messages.count_tokens" and candidates[0].dialect is Dialect.OPENAI:
            await count_tokens(
                self.client, candidates[0], body, exchange, send, self.server.response_timeout
            )
            return
        able = [p for p in candidates if route.engine_path(p.dialect) is not None]
        if not able:
            raise ApiError(
                400,
                f"model {exchange.model!r} is served only by engines without {route.path}",
            )
        if exchange.stream and self._may_open_early(route, able, body):
            # An engine may send nothing, not even its head, until its first token: the
            # client's stream then opens without it (gateway.keepalive.EarlyOpening).
            opening.arm(
                keepalive_for(route.dialect), exchange.keepalive, lambda: stream_head(exchange)
            )
            send = opening.send
        await self._relay(route, scope, body, able, exchange, send)

    def _may_open_early(self, route: ApiRoute, able: list[Provider], body: bytes) -> bool:
        """Whether a stream may open before its engine answers: each engine of `able`
        is one on this machine's side (whose head, as Ollama's, may wait for its first
        token; a cloud API's comes at once, with its rate limits), or Gate writes the
        response itself, translated, whichever serves it."""
        if all(provider.kind in _LOCAL_KINDS for provider in able):
            return True
        if route.name == "responses":
            return all(self.responses.translates(provider, body) for provider in able)
        return all(provider.dialect is not route.dialect for provider in able)

    async def _relay(
        self,
        route: ApiRoute,
        scope: Scope,
        body: bytes,
        able: list[Provider],
        exchange: Exchange,
        send: Send,
    ) -> None:
        """Send the request to an engine of `able` and relay its response, translated or
        as it is (`exchange.model_label` is set: the model is routed)."""
        assert exchange.model_label is not None
        upstream, provider, translation = await self._connect(route, scope, body, able, exchange)
        provider.in_flight += 1
        self.metrics.request_started(provider.name, exchange.model_label)
        exchange.metered = True
        try:
            async with upstream:
                exchange.status = upstream.status
                if translation is None:
                    await pass_through(
                        upstream, send, exchange, route.dialect, f"engine {provider.name}"
                    )
                    if exchange.stream and exchange.tokens_in is None and exchange.status < 400:
                        await count_unreported(
                            self.client, provider, body, exchange, self.server.response_timeout
                        )
                else:
                    await translation(upstream, send, exchange)
        finally:
            provider.in_flight -= 1

    async def _connect(
        self,
        route: ApiRoute,
        scope: Scope,
        body: bytes,
        candidates: list[Provider],
        exchange: Exchange,
    ) -> tuple[UpstreamResponse, Provider, Translation | None]:
        """Send the request to the first provider that takes it; fail over on connect errors.
        Also returns what writes the client's response when translated (None: relayed)."""
        client_headers = [(k, v) for k, v in scope["headers"] if k in _FORWARD_REQUEST_HEADERS]
        failures: list[str] = []
        request: dict[str, Any] | None = None  # decoded once, for the engines that translate
        for provider in candidates:
            if provider.full:
                failures.append(f"{provider.name}: at its concurrency limit")
                continue
            path = route.engine_path(provider.dialect)
            assert path is not None
            payload = body
            translation: Translation | None = None
            responses = route.name == "responses"
            if provider.dialect is not route.dialect:
                request = request if request is not None else decode_object(body)
                payload = translate_request(route, request)
                translation = translated_response(route, provider)
                if route.dialect is Dialect.ANTHROPIC:  # the Anthropic API reports usage
                    await count_translated_prompt(
                        self.client, provider, request, exchange, self.server.response_timeout
                    )
            elif responses and self.responses.translates(provider, body):
                path = CHAT_PATH
                payload, translation = await self._responses_as_chat(provider, body, exchange)
            elif route.name == "chat.completions" and provider.kind in _MAX_TOKENS_ONLY_KINDS:
                payload = _with_max_tokens(body)
            if _asks_for_usage(route, provider, exchange):
                asked = ask_for_usage(payload)
                payload, exchange.usage_asked = asked or payload, asked is not None
            headers = _merge_headers(client_headers, provider.auth_headers)
            exchange.provider = provider.name
            try:
                upstream = await self._send(provider, path, headers, payload)
                if (
                    responses
                    and translation is None
                    and self.responses.missing_endpoint(upstream.status)
                ):
                    # Perhaps an engine without /v1/responses: the same request again,
                    # translated, before the client saw anything (gateway.responses_api).
                    await _discard(upstream)
                    payload, translation = await self._responses_as_chat(provider, body, exchange)
                    upstream = await self._send(provider, CHAT_PATH, headers, payload)
                    self.responses.learn(provider, upstream.status)
            except UpstreamConnectError as exc:
                provider.healthy, provider.last_error = False, str(exc)
                failures.append(f"{provider.name}: {exc}")
                continue
            except UpstreamError as exc:
                raise api_error(exc, f"engine {provider.name}") from None
            return upstream, provider, translation
        if all("concurrency limit" in failure for failure in failures):
            raise LimitExceeded("provider", 1, f"every engine serving {exchange.model!r} is busy")
        raise ApiError(
            503, f"no engine serving {exchange.model!r} is reachable: " + "; ".join(failures)
        )

    async def _responses_as_chat(
        self, provider: Provider, body: bytes, exchange: Exchange
    ) -> tuple[bytes, Translation]:
        """/v1/responses for an engine without it: the chat request, its prompt counted
        for the usage the Responses stream ends with (the engine may not tell it)."""
        chat, translation = self.responses.prepare(body, exchange.client)
        await count_translated_prompt(
            self.client, provider, chat, exchange, self.server.response_timeout
        )
        return msgspec.json.encode(chat), translation

    async def _send(
        self, provider: Provider, path: str, headers: list[tuple[bytes, bytes]], payload: bytes
    ) -> UpstreamResponse:
        return await self.client.request(
            "POST",
            provider.url(path),
            headers=headers,
            body=payload,
            response_timeout=self.server.response_timeout,
            read_timeout=self.server.stream_idle_timeout,
        )

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
                    "door": exchange.door,
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
                tokens_source=exchange.tokens_source
                or (
                    "engine" if (exchange.tokens_in, exchange.tokens_out) != (None, None) else None
                ),
                door=exchange.door,
            )
        )


def _asks_for_usage(route: ApiRoute, provider: Provider, exchange: Exchange) -> bool:
    """Whether Gate asks an OpenAI engine for a stream's usage the client did not ask
    for (`stream_usage`): it is kept from the client, and goes into the usage record."""
    return (
        exchange.stream
        and not exchange.include_usage
        and provider.dialect is Dialect.OPENAI
        and route.name in ("chat.completions", "completions")
    )


# How `_route` may end other than by success: an answer, or a deliberately cut response.
_ENDINGS: Final[tuple[type[Exception], ...]] = (*ANSWERABLE, AbortResponse)


def _client_left(exchange: Exchange, response: ResponseTracker) -> bool:
    """Whether an http.disconnect means the client left (the exchange is then cut short):
    not once the response is complete, nor once the client has the whole answer."""
    if response.finished or exchange.answered:
        return False
    exchange.error = "client disconnected"
    if exchange.status < 400:
        exchange.status = 499  # nginx's code for "client closed request"
    return True


async def _discard(upstream: UpstreamResponse) -> None:
    """Read a small answer to its end (so its connection goes back to the pool) and close it."""
    with contextlib.suppress(UpstreamError):  # closing it is all that is left to do then
        await upstream.read(limit=64 * 1024)
    await upstream.aclose()


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
