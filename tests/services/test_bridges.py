"""Translated exchanges fed engine output of any shape: the client always gets a
well-formed answer in its own dialect, a finished stream or an error.

Hypothesis puts arbitrary JSON values at each field of a well-formed engine stream (or
body) and drives the real bridge over it; then the same shapes the issue met travel
through the whole app over HTTP.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.dialects import SSEDecoder
from gate.services.engines.client import StreamedResponse
from gate.services.engines.registry import Provider
from gate.services.gateway.exchange import API_ROUTES, ApiError, ApiRoute, Exchange
from gate.services.gateway.response import AbortResponse
from gate.services.gateway.translated import translated_response
from tests.services.gateway_app import (
    CHAT_COMPLETION,
    MESSAGE,
    engine,
    running_gate,
    serve_engine,
)

MESSAGES_ENDPOINT = next(e for e in API_ROUTES if e.path == "/v1/messages")
CHAT_ENDPOINT = next(e for e in API_ROUTES if e.path == "/v1/chat/completions")
OPENAI_ENGINE = Provider(name="e", kind="llamacpp", base_url="http://127.0.0.1:9")
ANTHROPIC_ENGINE = Provider(name="a", kind="anthropic", base_url="http://127.0.0.1:9")


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def call(index: int, **fields: Any) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, **fields}]}


CHAT_STREAM: list[dict[str, Any]] = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hi"}),
    chunk(call(0, id="call_1", type="function", function={"name": "f", "arguments": '{"a":'})),
    chunk(call(0, function={"arguments": "1}"})),
    {**chunk({}, "tool_calls"), "usage": None},
    {
        **chunk({}),
        "choices": [],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 1},
        },
    },
]
MESSAGE_STREAM: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {**MESSAGE, "content": [], "usage": {"input_tokens": 3, "output_tokens": 0}},
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 5},
    },
    {"type": "message_stop"},
]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["stop", "tool_calls", "text_delta", "tool_use", "error", "message_stop"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in `value` a field could hold something else: itself and its parts."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    document = copy.deepcopy(document)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return document


CHAT_STREAM_PATHS = paths(CHAT_STREAM)[1:]  # every chunk and every field of each chunk
MESSAGE_STREAM_PATHS = paths(MESSAGE_STREAM)[1:]


ABORTED = "test.aborted"  # run_bridge's mark for a response the server drops


class EngineBody(StreamedResponse):
    """An engine's response with a given body, read in two pieces."""

    def __init__(self, content_type: bytes, body: bytes) -> None:
        self.status = 200
        self.headers = [(b"content-type", content_type)]
        self.body = body

    async def aiter_body(self) -> AsyncGenerator[bytes, None]:
        middle = len(self.body) // 2
        yield self.body[:middle]
        yield self.body[middle:]

    async def aclose(self) -> None:
        pass


def run_bridge(
    endpoint: ApiRoute, provider: Provider, upstream: EngineBody, *, include_usage: bool = False
) -> list[dict[str, Any]]:
    """The messages the bridge sends to the client."""
    sent: list[dict[str, Any]] = []
    exchange = Exchange(endpoint, time.perf_counter(), model="m", include_usage=include_usage)

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        with trio.fail_after(5):
            try:
                await translated_response(endpoint, provider)(upstream, send, exchange)  # type: ignore[arg-type]
            except AbortResponse:  # the server drops the connection: no last body part
                sent.append({"type": ABORTED})

    trio.run(main)
    return sent


def sse_events(sent: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    """The client's view of a streamed answer: it started once, ended once (completed, or
    aborted right after an error event), and parses."""
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    aborted = sent[-1]["type"] == ABORTED
    bodies = sent[1:-1] if aborted else sent[1:]
    assert all(m["type"] == "http.response.body" for m in bodies)
    if not aborted:
        assert [m.get("more_body", False) for m in bodies][-1] is False
        bodies = bodies[:-1]
    assert all(m.get("more_body", False) for m in bodies)
    decoder = SSEDecoder()
    events = decoder.feed(b"".join(m["body"] for m in sent[1:] if "body" in m)) + decoder.finish()
    # A failed stream is never completed: its error event is followed by the abort.
    assert aborted == (bool(events) and '"error"' in events[-1].data), events[-1:]
    return [(event.event, event.data) for event in events]


def assert_anthropic_stream_ends_well(events: list[tuple[str | None, str]]) -> None:
    names = [name for name, _ in events]
    assert names, "no event at all"
    datas = [msgspec.json.decode(data) for _, data in events]
    assert all(
        isinstance(data, dict) and data["type"] == name
        for name, data in zip(names, datas, strict=True)
    )
    if names[-1] == "error":
        error = datas[-1]["error"]
        assert error["type"] == "api_error" and isinstance(error["message"], str)
        assert "error" not in names[:-1] and "message_stop" not in names
    else:
        assert names[-1] == "message_stop" and names.count("message_stop") == 1
        assert names[0] == "message_start"


def assert_openai_stream_ends_well(events: list[tuple[str | None, str]]) -> None:
    datas = [data for _, data in events]
    assert datas, "no event at all"
    if datas[-1] == "[DONE]":
        chunks = [msgspec.json.decode(data) for data in datas[:-1]]
        assert all("error" not in chunk and chunk["object"] for chunk in chunks)
    else:
        chunks = [msgspec.json.decode(data) for data in datas]
        error = chunks[-1]["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert "[DONE]" not in datas
        assert all("error" not in chunk for chunk in chunks[:-1])


def chat_sse(chunks: list[Any]) -> bytes:
    return b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in chunks) + (
        b"data: [DONE]\n\n"
    )


def message_sse(events: list[Any]) -> bytes:
    out = b""
    for event in events:
        name = event.get("type") if isinstance(event, dict) else None
        name = name if isinstance(name, str) and name.isidentifier() else "message_delta"
        out += b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"
    return out


# --- any engine output, straight into the bridge -------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CHAT_STREAM_PATHS), JSON)
def test_any_chat_chunk_field_ends_the_anthropic_stream_well(path, value) -> None:
    stream = replaced(CHAT_STREAM, path, value)
    upstream = EngineBody(b"text/event-stream", chat_sse(stream))
    assert_anthropic_stream_ends_well(
        sse_events(run_bridge(MESSAGES_ENDPOINT, OPENAI_ENGINE, upstream))
    )


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MESSAGE_STREAM_PATHS), JSON, st.booleans())
def test_any_message_event_field_ends_the_openai_stream_well(path, value, include_usage) -> None:
    stream = replaced(MESSAGE_STREAM, path, value)
    upstream = EngineBody(b"text/event-stream", message_sse(stream))
    events = sse_events(
        run_bridge(CHAT_ENDPOINT, ANTHROPIC_ENGINE, upstream, include_usage=include_usage)
    )
    assert_openai_stream_ends_well(events)


def assert_answered_or_bad_gateway(endpoint: ApiRoute, provider: Provider, body: Any) -> None:
    upstream = EngineBody(b"application/json", msgspec.json.encode(body))
    try:
        sent = run_bridge(endpoint, provider, upstream)
    except ApiError as exc:
        assert exc.status == 502
        return
    assert sent[0]["status"] == 200
    assert isinstance(msgspec.json.decode(sent[1]["body"]), dict)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(paths(CHAT_COMPLETION)), JSON)
def test_any_chat_completion_field_is_translated_or_a_502(path, value) -> None:
    body = replaced(CHAT_COMPLETION, path, value)
    assert_answered_or_bad_gateway(MESSAGES_ENDPOINT, OPENAI_ENGINE, body)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(paths(MESSAGE)), JSON)
def test_any_message_field_is_translated_or_a_502(path, value) -> None:
    body = replaced(MESSAGE, path, value)
    assert_answered_or_bad_gateway(CHAT_ENDPOINT, ANTHROPIC_ENGINE, body)


def test_the_well_formed_streams_translate_to_a_finished_stream() -> None:
    """The templates above are good streams: only the mutations make them bad."""
    upstream = EngineBody(b"text/event-stream", chat_sse(CHAT_STREAM))
    events = sse_events(run_bridge(MESSAGES_ENDPOINT, OPENAI_ENGINE, upstream))
    assert events[-1][0] == "message_stop"
    upstream = EngineBody(b"text/event-stream", message_sse(MESSAGE_STREAM))
    assert sse_events(run_bridge(CHAT_ENDPOINT, ANTHROPIC_ENGINE, upstream))[-1][1] == "[DONE]"


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("engine_usage", [False, True])
def test_a_translated_stream_reports_the_counted_prompt_and_the_engines_usage(
    exact: bool, engine_usage: bool
) -> None:
    """message_start carries the prompt counted before the request (marked `engine` or
    `estimate`); message_delta the engine's usage when it sends it (include_usage), which
    is no content, else the count and one output token per delta; the record agrees."""
    chunks: list[Any] = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": "Hi"}), chunk({"content": " there"}), chunk({}, "length")]
    if engine_usage:
        chunks.append({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}})
    exchange = Exchange(MESSAGES_ENDPOINT, time.perf_counter(), model="m", stream=True)
    exchange.prompt_count = (7, exact)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        upstream = EngineBody(b"text/event-stream", chat_sse(chunks))
        await translated_response(MESSAGES_ENDPOINT, OPENAI_ENGINE)(upstream, send, exchange)  # type: ignore[arg-type]

    trio.run(main)
    headers = dict(sent[0]["headers"])
    assert headers[b"x-gate-token-count"] == (b"engine" if exact else b"estimate")
    events = [(name, msgspec.json.decode(data)) for name, data in sse_events(sent)]
    start, delta = events[0][1], next(d for n, d in events if n == "message_delta")
    assert start["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    texts = [d["delta"]["text"] for n, d in events if n == "content_block_delta"]
    assert texts == ["Hi", " there"]
    expected = (12, 3) if engine_usage else (7, 2)
    assert (delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == expected
    assert (exchange.tokens_in, exchange.tokens_out) == expected


# --- the shapes, through the whole app -------------------------------------------
#
# The engine is a stand-in: no real engine emits malformed chunks on demand, and these
# shapes are what a buggy or hostile engine (or a proxy in front of one) could send.

BAD_CHAT_CHUNKS = {
    "choices-is-a-number": {"choices": 5},
    "tool_calls-is-a-number": chunk({"tool_calls": 7}),
}


async def stream_engine(path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    """Streams the chunk named by the request's model, after a good first chunk; answers
    a non-streamed request with a body whose `content` or `choices` is a number."""
    bad = body["model"]
    if path.endswith("/messages"):  # speaking Anthropic
        if not body.get("stream"):
            return 200, "application/json", msgspec.json.encode({**MESSAGE, "content": 7})
        start = {"type": "message_start", "message": "oops"}
        events = [start, *MESSAGE_STREAM[1:]]
        return 200, "text/event-stream", message_sse(events)
    if not body.get("stream"):
        return 200, "application/json", msgspec.json.encode({**CHAT_COMPLETION, "choices": 5})
    return 200, "text/event-stream", chat_sse([CHAT_STREAM[0], BAD_CHAT_CHUNKS[bad]])


async def read_aborted_stream(http: httpx.AsyncClient, path: str, body: Any) -> bytes:
    """A 200 stream that failed: its bytes, up to the connection Gate drops without the
    terminating chunk (the error event comes first, so SDKs read the failure)."""
    content = b""
    async with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            async for part in response.aiter_bytes():
                content += part
    return content


@pytest.mark.parametrize("bad", sorted(BAD_CHAT_CHUNKS))
async def test_a_malformed_chat_chunk_ends_the_anthropic_stream_with_an_error_event(
    bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, stream_engine)
        async with (
            running_gate([engine("e", url, bad)]) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(10):
                body = {"model": bad, "max_tokens": 5, "stream": True, "messages": []}
                body["messages"] = [{"role": "user", "content": "hi"}]
                content = await read_aborted_stream(http, "/v1/messages", body)
                decoder = SSEDecoder()
                events = decoder.feed(content) + decoder.finish()
                assert_anthropic_stream_ends_well([(e.event, e.data) for e in events])
                assert events[-1].event == "error"
        nursery.cancel_scope.cancel()
    assert_logged_once_without_traceback(caplog)


async def test_a_malformed_message_event_ends_the_openai_stream_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, stream_engine)
        async with (
            running_gate([engine("a", url, "m", kind="anthropic")]) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(10):
                body = {
                    "model": "m",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                content = await read_aborted_stream(http, "/v1/chat/completions", body)
                decoder = SSEDecoder()
                events = decoder.feed(content) + decoder.finish()
                assert_openai_stream_ends_well([(e.event, e.data) for e in events])
                assert "error" in msgspec.json.decode(events[-1].data)
        nursery.cancel_scope.cancel()
    assert_logged_once_without_traceback(caplog)


@pytest.mark.parametrize(
    ("path", "kind"), [("/v1/messages", "llamacpp"), ("/v1/chat/completions", "anthropic")]
)
async def test_a_malformed_engine_body_is_a_502_in_the_clients_dialect(
    path: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, stream_engine)
        async with (
            running_gate([engine("e", url, "m", kind=kind)]) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(10):
                body = {
                    "model": "m",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                response = await http.post(path, json=body)
                assert response.status_code == 502, response.text
                error = response.json()
                if path == "/v1/messages":
                    assert error["type"] == "error" and error["error"]["type"] == "api_error"
                else:
                    assert error["error"]["type"] == "server_error"
                assert "cannot be translated" in error["error"]["message"]
        nursery.cancel_scope.cancel()
    assert_logged_once_without_traceback(caplog)


def assert_logged_once_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.name == "gate.bridges"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is None
