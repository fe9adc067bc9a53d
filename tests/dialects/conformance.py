"""Checkers for what the translators produce, and the official SDKs as judges.

`check_messages_stream` is the Anthropic stream grammar as a transition table
(STYLE §3): a (state, event) pair that is not in it fails the check. The SDK helpers
run the real `anthropic` and `openai` clients against canned responses through an
in-memory transport (httpx2.MockTransport): no network, but the SDKs' own SSE
parsing, models and stream accumulators pass judgement on our bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytest

Event = tuple[str, dict[str, Any]]

# --- the Anthropic event grammar -----------------------------------------------------

# states: start -> message -> (block -> message)* -> delta -> stopped; or -> error
_GRAMMAR: dict[tuple[str, str], str] = {
    ("start", "message_start"): "message",
    ("start", "error"): "error",
    ("message", "ping"): "message",
    ("message", "content_block_start"): "block",
    ("message", "message_delta"): "delta",
    ("message", "error"): "error",
    ("block", "ping"): "block",
    ("block", "content_block_delta"): "block",
    ("block", "content_block_stop"): "message",
    ("block", "error"): "error",
    ("delta", "ping"): "delta",
    ("delta", "message_stop"): "stopped",
    ("delta", "error"): "error",
}
_DELTA_FOR_BLOCK = {"text": "text_delta", "tool_use": "input_json_delta"}


def check_messages_stream(events: list[Event], *, complete: bool = True) -> None:
    """Assert `events` is a well-formed Anthropic stream.

    message_start first; blocks with indices 0, 1, 2... each started, given deltas of
    its own kind, and stopped before the next starts; one message_delta with a stop
    reason, then message_stop last. Or an `error` event, last, at any point. With
    `complete`, the stream must have reached message_stop or error.
    """
    state = "start"
    next_index = 0
    block_type: str | None = None
    for n, (name, data) in enumerate(events):
        assert data.get("type") == name, f"event {n}: name {name!r} but type {data.get('type')!r}"
        key = (state, name)
        assert key in _GRAMMAR, f"event {n}: {name!r} not allowed in state {state!r}"
        if name == "message_start":
            message = data["message"]
            assert message["content"] == [] and message["stop_reason"] is None
            assert message["role"] == "assistant" and message["type"] == "message"
        elif name == "content_block_start":
            assert data["index"] == next_index, f"event {n}: index {data['index']} != {next_index}"
            block_type = data["content_block"]["type"]
            assert block_type in _DELTA_FOR_BLOCK
        elif name == "content_block_delta":
            assert data["index"] == next_index
            assert data["delta"]["type"] == _DELTA_FOR_BLOCK[block_type or ""]
        elif name == "content_block_stop":
            assert data["index"] == next_index
            next_index += 1
        elif name == "message_delta":
            assert data["delta"]["stop_reason"] is not None
            assert isinstance(data["usage"]["output_tokens"], int)
        elif name == "error":
            assert set(data["error"]) == {"type", "message"}
        state = _GRAMMAR[key]
    if complete:
        assert state in ("stopped", "error"), f"stream ended in state {state!r}"


def validate_messages_events(events: list[Event]) -> None:
    """Every event validates as the SDK's RawMessageStreamEvent (error events aside)."""
    pydantic = pytest.importorskip("pydantic")
    types = pytest.importorskip("anthropic.types")
    adapter = pydantic.TypeAdapter(types.RawMessageStreamEvent)
    for name, data in events:
        if name == "error":
            types.ErrorResponse.model_validate(data)
        elif name != "ping":
            assert adapter.validate_python(data).type == name


# --- OpenAI chunks ---------------------------------------------------------------------


def check_chat_stream(chunks: list[dict[str, Any]]) -> None:
    """Chunks validate as the SDK's ChatCompletionChunk; role first; finish_reason last."""
    chat = pytest.importorskip("openai.types.chat")
    assert chunks, "no chunks"
    if "error" in chunks[-1]:
        assert set(chunks[-1]["error"]) == {"message", "type", "param", "code"}
        chunks = chunks[:-1]
    parsed = [chat.ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    if parsed:
        assert parsed[0].choices[0].delta.role == "assistant"
    finished = [c for c in parsed if c.choices and c.choices[0].finish_reason]
    assert len(finished) <= 1
    if finished:
        after = parsed[parsed.index(finished[0]) + 1 :]
        assert all(not c.choices and c.usage is not None for c in after)


def accumulate_chat(chunks: list[dict[str, Any]]) -> Any:
    """The ChatCompletion the openai SDK's own accumulator builds from `chunks`."""
    streaming = pytest.importorskip("openai.lib.streaming.chat")
    chat = pytest.importorskip("openai.types.chat")
    state = streaming.ChatCompletionStreamState()
    for chunk in chunks:
        for _ in state.handle_chunk(chat.ChatCompletionChunk.model_validate(chunk)):
            pass
    # The snapshot, not get_final_completion(): that one refuses finish_reason "length".
    return state.current_completion_snapshot


# --- the SDKs over an in-memory transport ---------------------------------------------

Handler = Callable[[dict[str, Any]], tuple[int, str, bytes]]


def _transport(handler: Handler, seen: list[dict[str, Any]]) -> Any:
    httpx2 = pytest.importorskip("httpx2")

    def respond(request: Any) -> Any:
        body = json.loads(request.content)
        seen.append(body)
        status, content_type, content = handler(body)
        return httpx2.Response(status, headers={"content-type": content_type}, content=content)

    return httpx2.Client(transport=httpx2.MockTransport(respond))


def anthropic_client(handler: Handler, seen: list[dict[str, Any]] | None = None) -> Any:
    """An `anthropic.Anthropic` whose every request is answered by `handler(body)`."""
    anthropic = pytest.importorskip("anthropic")
    http = _transport(handler, [] if seen is None else seen)
    return anthropic.Anthropic(
        api_key="test", base_url="http://gate.test", http_client=http, max_retries=0
    )


def openai_client(handler: Handler, seen: list[dict[str, Any]] | None = None) -> Any:
    """An `openai.OpenAI` whose every request is answered by `handler(body)`."""
    openai = pytest.importorskip("openai")
    http = _transport(handler, [] if seen is None else seen)
    return openai.OpenAI(
        api_key="test", base_url="http://gate.test/v1", http_client=http, max_retries=0
    )


def final_message(events: list[Event]) -> Any:
    """The Message the anthropic SDK's MessageStream accumulates from our events' bytes."""
    from gate.dialects import sse_bytes

    body = sse_bytes(events)
    client = anthropic_client(lambda _: (200, "text/event-stream", body))
    with client.messages.stream(
        model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        return stream.get_final_message()


def validate_params(param_type: Any, value: Mapping[str, Any]) -> None:
    """Validate a request dict against an SDK TypedDict, forcing its lazy Iterables."""
    pydantic = pytest.importorskip("pydantic")
    # The adapter must outlive the lazy validators it returns (else pydantic-core panics).
    adapter = pydantic.TypeAdapter(param_type)
    _force(adapter.validate_python(value))


def _force(value: Any) -> None:
    # pydantic validates Iterable[...] fields lazily, as generators: consume them.
    if isinstance(value, Mapping):
        for item in value.values():
            _force(item)
    elif isinstance(value, list | tuple) or (
        isinstance(value, Iterable) and not isinstance(value, str | bytes)
    ):
        for item in value:
            _force(item)
