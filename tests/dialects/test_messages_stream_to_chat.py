"""Anthropic stream events -> OpenAI chat.completion.chunk dicts.

Chunks are validated as the openai SDK's ChatCompletionChunk, accumulated with the
SDK's own ChatCompletionStreamState, and read by a real `openai.OpenAI` client.
"""

from __future__ import annotations

from typing import Any

import pytest

from gate.dialects import (
    SSE_DONE,
    MalformedUpstream,
    MessagesStreamToChatStream,
    TranslatorClosed,
    chat_sse_bytes,
)
from tests.dialects.conformance import accumulate_chat, check_chat_stream, openai_client

Event = tuple[str, dict[str, Any]]


def start(input_tokens: int = 12) -> Event:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    return "message_start", {"type": "message_start", "message": message}


def block_start(index: int, block: dict[str, Any]) -> Event:
    return "content_block_start", {
        "type": "content_block_start",
        "index": index,
        "content_block": block,
    }


def delta(index: int, value: dict[str, Any]) -> Event:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": value}


def text_delta(index: int, text: str) -> Event:
    return delta(index, {"type": "text_delta", "text": text})


def json_delta(index: int, fragment: str) -> Event:
    return delta(index, {"type": "input_json_delta", "partial_json": fragment})


def block_stop(index: int) -> Event:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def end(stop_reason: str, output_tokens: int = 7) -> list[Event]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


PING: Event = ("ping", {"type": "ping"})
TEXT_BLOCK = {"type": "text", "text": ""}


def tool_block(call_id: str, name: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {}}


def translate(events: list[Event], *, include_usage: bool = False) -> list[dict[str, Any]]:
    translator = MessagesStreamToChatStream(
        "gpt-x", "chatcmpl-1", created=1700000000, include_usage=include_usage
    )
    chunks: list[dict[str, Any]] = []
    for name, data in events:
        chunks += translator.feed(name, data)
    check_chat_stream(chunks)
    return chunks


TEXT_STREAM = [
    start(),
    PING,
    block_start(0, TEXT_BLOCK),
    text_delta(0, "Hel"),
    text_delta(0, "lo"),
    block_stop(0),
    *end("end_turn"),
]

TOOL_STREAM = [
    start(),
    block_start(0, TEXT_BLOCK),
    text_delta(0, "Checking."),
    block_stop(0),
    block_start(1, tool_block("toolu_1", "get_weather")),
    json_delta(1, '{"city":'),
    json_delta(1, ' "Paris"}'),
    block_stop(1),
    block_start(2, tool_block("toolu_2", "get_time")),
    json_delta(2, "{}"),
    block_stop(2),
    *end("tool_use", 30),
]


def test_text_stream_chunks_are_openais_shape() -> None:
    chunks = translate(TEXT_STREAM)
    base = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-x",
    }

    def expect(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    assert chunks == [
        expect({"role": "assistant", "content": ""}),
        expect({"content": "Hel"}),
        expect({"content": "lo"}),
        expect({}, "stop"),
    ]
    completion = accumulate_chat(chunks)
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == (
        "Hello",
        "stop",
    )


def test_tool_calls_stream_with_usage() -> None:
    chunks = translate(TOOL_STREAM, include_usage=True)
    assert all("usage" in c for c in chunks)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    first_call = chunks[2]["choices"][0]["delta"]["tool_calls"][0]
    assert first_call == {
        "index": 0,
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    choice = accumulate_chat(chunks).choices[0]
    assert choice.message.content == "Checking."
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("toolu_1", "get_weather", '{"city": "Paris"}'),
        ("toolu_2", "get_time", "{}"),
    ]
    assert choice.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
    ],
)
def test_finish_reasons(stop_reason: str, finish: str) -> None:
    chunks = translate([start(), *end(stop_reason)])
    assert chunks[-1]["choices"][0]["finish_reason"] == finish


def test_thinking_pings_and_unknown_events_are_skipped() -> None:
    chunks = translate(
        [
            start(),
            block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "hmm"}),
            delta(0, {"type": "signature_delta", "signature": "abc"}),
            block_stop(0),
            PING,
            ("future_event", {"type": "future_event"}),
            block_start(1, TEXT_BLOCK),
            text_delta(1, "ok"),
            block_stop(1),
            *end("end_turn"),
        ]
    )
    assert accumulate_chat(chunks).choices[0].message.content == "ok"
    assert len(chunks) == 3


def test_upstream_error_event_becomes_an_error_payload_and_ends_the_stream() -> None:
    translator = MessagesStreamToChatStream("gpt-x", "chatcmpl-1")
    chunks = translator.feed(*start()) + translator.feed(*text_delta(0, "Hi"))
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    chunks += translator.feed("error", error)
    assert chunks[-1] == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": None}
    }
    check_chat_stream(chunks)
    assert translator.done
    with pytest.raises(TranslatorClosed):
        translator.feed(*PING)


def test_fail_mid_stream() -> None:
    translator = MessagesStreamToChatStream("gpt-x", "chatcmpl-1")
    chunks = translator.feed(*start()) + translator.fail("connection reset")
    assert chunks[-1]["error"]["message"] == "connection reset"
    with pytest.raises(TranslatorClosed):
        translator.fail("again")


def test_the_openai_sdk_reads_our_stream() -> None:
    chunks = translate(TOOL_STREAM, include_usage=True)
    wire = chat_sse_bytes(chunks) + SSE_DONE
    client = openai_client(lambda _: (200, "text/event-stream", wire))
    with client.chat.completions.stream(
        model="gpt-x",
        messages=[{"role": "user", "content": "x"}],
        stream_options={"include_usage": True},
    ) as stream:
        for _ in stream:
            pass
        completion = stream.get_final_completion()
    assert completion.choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert completion.usage.total_tokens == 42


def test_event_data_that_is_not_an_object_is_an_upstream_error() -> None:
    with pytest.raises(MalformedUpstream):
        MessagesStreamToChatStream("m", "c").feed("message_start", "nope")  # type: ignore[arg-type]
