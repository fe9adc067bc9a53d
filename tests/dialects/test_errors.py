"""Error bodies in both dialects, judged by the SDKs that will read them."""

from __future__ import annotations

import pytest

from gate.dialects import (
    SSE_DONE,
    InvalidRequest,
    MalformedUpstream,
    anthropic_error,
    anthropic_stream_error,
    chat_sse_bytes,
    openai_error,
    openai_model_not_found,
    openai_stream_error,
    sse_bytes,
)
from tests.dialects.conformance import anthropic_client, openai_client

ANTHROPIC_TYPES = [
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (402, "billing_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (409, "conflict_error"),
    (413, "request_too_large"),
    (422, "invalid_request_error"),  # "other 4XX status codes"
    (429, "rate_limit_error"),
    (500, "api_error"),
    (502, "api_error"),
    (503, "overloaded_error"),
    (504, "timeout_error"),
    (529, "overloaded_error"),
]

OPENAI_TYPES = [
    (400, "invalid_request_error", None),
    (401, "authentication_error", "invalid_api_key"),
    (403, "permission_error", None),
    (404, "not_found_error", None),
    (413, "invalid_request_error", "request_too_large"),
    (422, "invalid_request_error", None),
    (429, "rate_limit_error", "rate_limit_exceeded"),
    (500, "server_error", None),
    (502, "server_error", None),
    (503, "server_error", None),
    (504, "server_error", None),
]


@pytest.mark.parametrize(("status", "error_type"), ANTHROPIC_TYPES)
def test_anthropic_error_types_by_status(status: int, error_type: str) -> None:
    body = anthropic_error(status, "boom")
    assert body == {"type": "error", "error": {"type": error_type, "message": "boom"}}
    assert anthropic_error(status, "boom", type="x")["error"]["type"] == "x"


@pytest.mark.parametrize(("status", "error_type", "code"), OPENAI_TYPES)
def test_openai_error_types_by_status(status: int, error_type: str, code: str | None) -> None:
    body = openai_error(status, "boom", param="model")
    assert body == {
        "error": {"message": "boom", "type": error_type, "param": "model", "code": code}
    }


def test_openai_model_not_found_is_openais_exact_body() -> None:
    assert openai_model_not_found("gpt-9") == {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


def test_dialect_errors_carry_their_status_and_render_both_ways() -> None:
    error = InvalidRequest("must be a list", param="messages")
    assert error.status == 400
    assert error.to_openai()["error"] == {
        "message": "must be a list",
        "type": "invalid_request_error",
        "param": "messages",
        "code": None,
    }
    assert error.to_anthropic()["error"] == {
        "type": "invalid_request_error",
        "message": "messages: must be a list",
    }
    assert MalformedUpstream("bad chunk").to_anthropic()["error"]["type"] == "api_error"


# The SDKs raise the exception class for the status and keep the body.
@pytest.mark.parametrize(("status", "error_type"), ANTHROPIC_TYPES)
def test_anthropic_sdk_reads_our_error_bodies(status: int, error_type: str) -> None:
    anthropic = pytest.importorskip("anthropic")
    pydantic = pytest.importorskip("pydantic")
    body = sse_bytes([("x", anthropic_error(status, "boom"))]).split(b"data: ")[1].strip()
    client = anthropic_client(lambda _: (status, "application/json", body))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert info.value.body["error"]["type"] == error_type
    if error_type != "request_too_large":  # documented for 413, but not in the SDK's enum
        pydantic.TypeAdapter(anthropic.types.ErrorType).validate_python(error_type)


@pytest.mark.parametrize(("status", "error_type", "code"), OPENAI_TYPES)
def test_openai_sdk_reads_our_error_bodies(status: int, error_type: str, code: str | None) -> None:
    openai = pytest.importorskip("openai")
    body = chat_sse_bytes([openai_error(status, "boom")])[len(b"data: ") :].strip()
    client = openai_client(lambda _: (status, "application/json", body))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert (info.value.type, info.value.code, info.value.body["message"]) == (
        error_type,
        code,
        "boom",
    )


def test_anthropic_sdk_raises_on_a_mid_stream_error_event() -> None:
    anthropic = pytest.importorskip("anthropic")
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 0},
        },
    }
    wire = sse_bytes([("message_start", start), anthropic_stream_error("engine died")])
    error = b'{"type":"error","error":{"type":"api_error","message":"engine died"}}'
    assert wire.endswith(b"event: error\ndata: " + error + b"\n\n")
    client = anthropic_client(lambda _: (200, "text/event-stream", wire))
    messages = [{"role": "user", "content": "x"}]
    with (
        pytest.raises(anthropic.APIStatusError, match="engine died"),
        client.messages.stream(model="m", max_tokens=1, messages=messages) as stream,
    ):
        stream.get_final_message()


def test_openai_sdk_raises_on_a_mid_stream_error_payload() -> None:
    openai = pytest.importorskip("openai")
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
    }
    wire = chat_sse_bytes([chunk, openai_stream_error("engine died")])
    assert SSE_DONE not in wire
    client = openai_client(lambda _: (200, "text/event-stream", wire))
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError, match="engine died"):
        list(stream)


def test_a_dialect_error_names_its_parameter() -> None:
    assert str(InvalidRequest("must be a list", param="messages")) == "messages: must be a list"
    assert str(MalformedUpstream("no choices")) == "no choices"
