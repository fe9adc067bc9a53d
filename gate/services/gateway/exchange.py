"""What one API request is: its route, its outcome, and the errors it can end with.

Shared by the pipeline and the translated exchanges.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from gate.dialects.errors import DialectError, anthropic_error, openai_error
from gate.errors import GateError
from gate.json_depth import MAX_JSON_DEPTH, nests_deeper_than
from gate.services.engines.client import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from gate.services.engines.registry import Dialect
from gate.services.gateway.limits import LimitExceeded, retry_after_value
from gate.services.http.router import BodyError, Send, send_json
from gate.services.transport.quic import TransportError

__all__ = [
    "ANSWERABLE",
    "API_ROUTES",
    "MAX_JSON_DEPTH",
    "ApiError",
    "ApiRoute",
    "Exchange",
    "Translation",
    "api_error",
    "decode_request",
    "nested_too_deep",
]


class ApiError(GateError):
    """An answer other than success, rendered in the client's dialect."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.retry_after = retry_after

    def body(self, dialect: Dialect) -> dict[str, Any]:
        if dialect is Dialect.ANTHROPIC:
            return anthropic_error(self.status, self.message, type=self.type)
        return openai_error(self.status, self.message, type=self.type, code=self.code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", retry_after_value(self.retry_after))]

    async def answer(self, send: Send, dialect: Dialect) -> None:
        """Send this error as the whole response, in `dialect`."""
        await send_json(send, self.status, self.body(dialect), self.headers())


# How each failure is answered: its status (None: the failure carries its own), and what
# it says its subject did. The first class in the failure's MRO found here decides.
_ANSWERS: Final[dict[type[Exception], tuple[int | None, str]]] = {
    UpstreamTimeout: (504, "did not answer"),
    UpstreamConnectError: (503, "is not reachable"),
    TransportError: (503, "is not reachable"),
    UpstreamError: (502, "failed"),
    DialectError: (None, "cannot be translated"),
    BodyError: (None, "cannot be read"),
    LimitExceeded: (429, "is over its limit"),
}
# What `api_error` turns into an answer; handlers catch these (ApiError included).
ANSWERABLE: Final[tuple[type[Exception], ...]] = (ApiError, *_ANSWERS)


def api_error(failure: Exception, subject: str | None = None) -> ApiError:
    """The answer to `failure`, by the table above: the one place that maps failures to
    statuses. `subject` names who failed ("engine X", "peer Y"): the message then says
    what it did ("engine X did not answer: ..."); without one it is the failure's own.
    A refusal by a limit carries its Retry-After."""
    if isinstance(failure, ApiError):
        return failure
    status, did = next(
        (_ANSWERS[kind] for kind in type(failure).__mro__ if kind in _ANSWERS), (500, "failed")
    )
    if status is None:
        status = int(getattr(failure, "status", 500))
    message = f"{subject} {did}: {failure}" if subject else str(failure)
    retry_after = failure.retry_after if isinstance(failure, LimitExceeded) else None
    return ApiError(status, message, retry_after=retry_after)


@dataclass(frozen=True)
class ApiRoute:
    """A path of the API and how it is served (transport's Endpoint is iroh's, not this)."""

    path: str
    dialect: Dialect  # the dialect the client speaks on this path
    name: str  # for metrics and usage
    # The engine path per engine dialect; None: that dialect cannot serve it.
    openai_path: str | None
    anthropic_path: str | None

    def engine_path(self, dialect: Dialect) -> str | None:
        return self.openai_path if dialect is Dialect.OPENAI else self.anthropic_path


API_ROUTES: Final = (
    ApiRoute(
        "/v1/chat/completions",
        Dialect.OPENAI,
        "chat.completions",
        "/v1/chat/completions",
        "/v1/messages",
    ),
    ApiRoute("/v1/completions", Dialect.OPENAI, "completions", "/v1/completions", None),
    ApiRoute("/v1/embeddings", Dialect.OPENAI, "embeddings", "/v1/embeddings", None),
    ApiRoute("/v1/responses", Dialect.OPENAI, "responses", "/v1/responses", None),
    ApiRoute("/v1/messages", Dialect.ANTHROPIC, "messages", "/v1/chat/completions", "/v1/messages"),
    ApiRoute(
        "/v1/messages/count_tokens",
        Dialect.ANTHROPIC,
        "messages.count_tokens",
        None,
        "/v1/messages/count_tokens",
    ),
)


@dataclass(eq=False)
class Exchange:
    """What one request did; becomes its usage record and metrics."""

    route: ApiRoute
    started: float  # perf_counter
    client: str = ""
    door: str = "local"  # the Door it came through: local, peer or relay
    model: str = ""
    model_label: str | None = None  # its metrics label, fixed once it is routed
    provider: str | None = None
    peer: str | None = None  # the peer that sent this request, or that served it
    stream: bool = False
    status: int = 0
    ttft: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None
    include_usage: bool = False  # an OpenAI client asked for stream_options.include_usage
    usage_asked: bool = False  # Gate asked the engine for it instead (`stream_usage`)
    # How the token counts were obtained when the engine did not report them: "counted"
    # or "estimate" (None: as the engine reported them).
    tokens_source: str | None = None
    # A translated Anthropic stream's prompt, counted before it goes to the engine (for
    # message_start, which precedes every token): (count, by the engine's tokenizer?)
    prompt_count: tuple[int, bool] | None = None
    # Seconds of silence after which a translated stream sends a keepalive
    # (server.stream_keepalive, as it was when the request came).
    keepalive: float = 15.0
    metered: bool = False  # counted in the in-flight gauge (once a provider was chosen)
    # The client has the whole answer: a stream's closing event went out. Clients hang up
    # then (Codex at response.completed), before the body's end: that cuts nothing short.
    answered: bool = False

    def first_byte(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.started


# A translated exchange: gets the engine's response and writes the client's.
Translation = Callable[[UpstreamResponse, Send, Exchange], Awaitable[None]]


def decode_request(body: bytes) -> Any:
    """A request body decoded whole: 400 unless it is JSON nested at most MAX_JSON_DEPTH."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder's own guard, far past the bound
        raise nested_too_deep() from None
    if nests_deeper_than(value):
        raise nested_too_deep()
    return value


def nested_too_deep() -> ApiError:
    return ApiError(400, f"request body nests arrays and objects more than {MAX_JSON_DEPTH} deep")
