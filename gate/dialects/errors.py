"""Error bodies in each dialect, and the errors the translators raise.

HTTP errors
-----------
OpenAI: `{"error": {"message", "type", "param", "code"}}` (API reference, "Error
codes"). Clients act on the HTTP status (the SDKs map it to an exception class); the
`type` strings are advisory. OpenAI itself is not consistent about them (a bad key is
`invalid_request_error` + code `invalid_api_key`), so the defaults below follow the
status-named set that OpenAI-compatible servers such as llama.cpp use, plus the codes
OpenAI documents: `invalid_api_key` (401), `model_not_found` (404, under type
`invalid_request_error`: see `openai_model_not_found`), `rate_limit_exceeded` (429).

Anthropic: `{"type": "error", "error": {"type", "message"}}` (docs "Errors"), with a
documented type per status: 400 invalid_request_error (also "other 4XX"), 401
authentication_error, 402 billing_error, 403 permission_error, 404 not_found_error,
409 conflict_error (in the SDK's ErrorType), 413 request_too_large, 429
rate_limit_error, 500 api_error, 504 timeout_error, 529 overloaded_error. Not
documented, our choice: 502 (the engine failed) -> api_error, 503 (no engine
available) -> overloaded_error, the type clients already retry on.

Mid-stream errors
-----------------
Once a 200 and some events have gone out, an error can only travel in the stream.
Anthropic sends `event: error` with the same body as an HTTP error (docs
"Streaming messages", "Error events"); the SDK raises on it. OpenAI sends a plain
`data: {"error": {...}}` line; the SDK raises APIError on any chunk carrying an
`error` key (openai/_streaming.py). Either way nothing follows it: never a fake
`message_stop` or `[DONE]` that would turn a failure into a short success; the gateway
then aborts the response, without the terminating chunk, so that a client that checks
only the HTTP framing sees the failure too (gate.services.gateway.response).
"""

from __future__ import annotations

from typing import Any, Final

from gate.protocol.errors import GateError

__all__ = [
    "DialectError",
    "InvalidRequest",
    "MalformedUpstream",
    "TranslatorClosed",
    "anthropic_error",
    "anthropic_stream_error",
    "openai_error",
    "openai_model_not_found",
    "openai_stream_error",
]

_OPENAI_TYPES: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}

_ANTHROPIC_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def openai_error(
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error body; `type` and `code` default from the status (module docstring)."""
    default_type, default_code = _OPENAI_TYPES.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return {
        "error": {
            "message": message,
            "type": type or default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }


def openai_model_not_found(model: str) -> dict[str, Any]:
    """OpenAI's exact 404 body for an unknown model."""
    return openai_error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


def anthropic_error(status: int, message: str, *, type: str | None = None) -> dict[str, Any]:
    """An Anthropic error body; `type` defaults from the status (module docstring)."""
    default = _ANTHROPIC_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": type or default, "message": message}}


def anthropic_stream_error(
    message: str, error_type: str = "api_error"
) -> tuple[str, dict[str, Any]]:
    """The `(event name, data)` of Anthropic's mid-stream `error` event."""
    return "error", {"type": "error", "error": {"type": error_type, "message": message}}


def openai_stream_error(
    message: str, *, type: str = "server_error", code: str | None = None
) -> dict[str, Any]:
    """The payload of OpenAI's mid-stream error: sent as `data: <json>`, with no event name."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


class DialectError(GateError):
    """A translation failed. Carries the HTTP status and renders itself in either dialect."""

    status: int = 500

    def __init__(self, message: str, *, param: str | None = None) -> None:
        # str() names the parameter, as Anthropic's messages do ("messages.0.role: ...").
        super().__init__(f"{param}: {message}" if param else message)
        self.message = message
        self.param = param

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's form: the parameter has a field of its own."""
        return openai_error(self.status, self.message, param=self.param)

    def to_anthropic(self) -> dict[str, Any]:
        return anthropic_error(self.status, str(self))


class InvalidRequest(DialectError):
    """The client's request is malformed, or asks for something the target cannot express
    (a server tool, a file reference, n > 1...). Answered with 400."""

    status = 400


class MalformedUpstream(DialectError):
    """The engine sent something that cannot be translated. Answered with 502 before the
    stream starts, or with the dialect's stream error event after."""

    status = 502


class TranslatorClosed(DialectError):
    """A stream translator was fed after it finished or failed: a bug in the caller."""

    status = 500
