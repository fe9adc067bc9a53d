"""What this node serves and counts, for a client to read: the models, here and at its
peers (`/v1/models`, `/v1/models/{id}`, in the client's dialect), and the Prometheus
metrics (`/metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gate.services.engines.registry import Dialect, ProviderRegistry
from gate.services.gateway.exchange import ApiError
from gate.services.gateway.metrics import Metrics, send_exposition
from gate.services.http.router import Receive, Scope, Send, send_json
from gate.services.p2p.service import P2PService

__all__ = ["Listing"]


class Listing:
    """The GET routes of the API. `authenticate` is the gateway's: it returns the
    client's identity or raises ApiError."""

    def __init__(
        self,
        registry: ProviderRegistry,
        peers: P2PService | None,
        metrics: Metrics,
        authenticate: Callable[[Scope], str],
    ) -> None:
        self.registry, self.peers, self.metrics = registry, peers, metrics
        self.authenticate = authenticate

    def all_models(self) -> dict[str, list[str]]:
        """Every model a client may name, here or at a connected peer -> who serves it
        (provider names, ``peer:<node id>``)."""
        models = self.registry.model_ids()
        if self.peers is not None:
            for model, owners in self.peers.peer_models().items():
                models.setdefault(model, []).extend(owners)
        return models

    def unknown_model(self, model: str) -> ApiError:
        """The 404 for a model nobody serves, naming those that are: the same for
        `GET /v1/models/{id}` and a request that names it."""
        known = sorted(self.all_models())
        listing = ", ".join(known) if known else "none (no engine is reachable)"
        return ApiError(
            404,
            f"model {model!r} is not served here; available models: {listing}",
            code="model_not_found",
        )

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self.authenticate(scope)
        except ApiError as exc:
            await exc.answer(send, _dialect_of(scope))
            return
        models = self.all_models()
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
            self.authenticate(scope)
        except ApiError as exc:
            await exc.answer(send, dialect)
            return
        model = scope["path"].removeprefix("/v1/models/")
        owners = self.all_models().get(model)
        if owners is None:
            await self.unknown_model(model).answer(send, dialect)
        elif dialect is Dialect.ANTHROPIC:
            await send_json(send, 200, _anthropic_model(model))
        else:
            await send_json(send, 200, _openai_model(model, owners))

    async def render_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self.authenticate(scope)
        except ApiError as exc:
            await exc.answer(send, Dialect.OPENAI)
            return
        await send_exposition(send, self.metrics.render())


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
