"""OpenAI chat.completion.chunk streams -> Anthropic stream events.

Realistic sequences are checked three ways: the grammar table in conformance.py, the
anthropic SDK's event models, and the Message the SDK's MessageStream accumulates
from our bytes. Hypothesis then walks random sequences through the same checks.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.dialects import ChatStreamToMessagesStream, MalformedUpstream, TranslatorClosed
from tests.dialects.conformance import (
    check_messages_stream,
    final_message,
    validate_messages_events,
)
from tests.dialects.streams import (
    ROLE,
    any_chunk,
    chunk,
    realistic_streams,
    text,
    tool_args,
    tool_start,
    usage,
)

Event = tuple[str, dict[str, Any]]


def translate(
    chunks: list[dict[str, Any]], *, fail: str | None = None, hint: int = 0
) -> list[Event]:
    translator = ChatStreamToMessagesStream("claude-x", "msg_1", input_tokens_hint=hint)
    events: list[Event] = []
    for c in chunks:
        events += translator.feed(c)
    events += translator.fail(fail) if fail is not None else translator.finish()
    check_messages_stream(events)
    validate_messages_events(events)
    return events


def test_text_only_stream_is_exactly_anthropics_grammar() -> None:
    events = translate([ROLE, text("Hel"), text("lo"), chunk(finish="stop"), usage(9, 2)], hint=9)
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 9, "output_tokens": 0},
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 9, "output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    message = final_message(events)
    assert [b.text for b in message.content] == ["Hello"]
    assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == (
        "end_turn",
        9,
        2,
    )


def test_text_then_a_tool_call() -> None:
    events = translate(
        [
            ROLE,
            text("Let me check."),
            tool_start(0, "call_1", "get_weather"),
            tool_args(0, '{"city"'),
            tool_args(0, ': "Paris"}'),
            chunk(finish="tool_calls"),
            usage(20, 11),
        ]
    )
    message = final_message(events)
    assert message.content[0].text == "Let me check."
    tool = message.content[1]
    assert (tool.type, tool.id, tool.name, tool.input) == (
        "tool_use",
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert message.stop_reason == "tool_use"
    deltas = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["index"] == 1
    ]
    assert deltas == ['{"city"', ': "Paris"}']  # streamed as it came


def test_two_parallel_tool_calls_with_interleaved_fragments() -> None:
    events = translate(
        [
            ROLE,
            tool_start(0, "call_a", "get_weather"),
            tool_start(1, "call_b", "get_time"),
            tool_args(0, '{"city": '),
            tool_args(1, '{"tz": "CET"'),
            tool_args(0, '"Rome"}'),
            tool_args(1, "}"),
            chunk(finish="tool_calls"),
        ]
    )
    message = final_message(events)
    assert [(b.id, b.name, b.input) for b in message.content] == [
        ("call_a", "get_weather", {"city": "Rome"}),
        ("call_b", "get_time", {"tz": "CET"}),
    ]


def test_sequential_tool_calls_all_stream_live() -> None:
    events = translate(
        [
            tool_start(0, "a", "f", '{"x":'),
            tool_args(0, "1}"),
            tool_start(1, "b", "g", '{"y":'),
            tool_args(1, "2}"),
            chunk(finish="tool_calls"),
        ]
    )
    names = [(n, d.get("index")) for n, d in events if n.startswith("content_block")]
    assert names == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    assert [b.input for b in final_message(events).content] == [{"x": 1}, {"y": 2}]


def test_usage_chunk_after_finish_reason_is_reported() -> None:
    events = translate([text("hi"), chunk(finish="stop"), usage(100, 7)], hint=90)
    start, delta = events[0][1], events[-2][1]
    assert start["message"]["usage"] == {"input_tokens": 90, "output_tokens": 0}
    assert delta["usage"] == {"input_tokens": 100, "output_tokens": 7}


def test_empty_content() -> None:
    events = translate([ROLE, chunk(finish="stop")])
    assert [n for n, _ in events] == ["message_start", "ping", "message_delta", "message_stop"]
    message = final_message(events)
    assert (message.content, message.stop_reason) == ([], "end_turn")


@pytest.mark.parametrize(
    ("finish", "stop_reason", "extra"),
    [
        ("stop", "end_turn", {}),
        ("length", "max_tokens", {}),
        ("content_filter", "refusal", {}),
        (None, "end_turn", {}),  # [DONE] without a finish_reason
        ("stop", "stop_sequence", {"stop_reason": "###"}),  # vLLM names the stop string
    ],
)
def test_stop_reasons(finish: str | None, stop_reason: str, extra: dict[str, Any]) -> None:
    events = translate([text("x"), chunk(finish=finish, **extra)])
    delta = events[-2][1]["delta"]
    assert delta["stop_reason"] == stop_reason
    assert delta["stop_sequence"] == extra.get("stop_reason")


def test_upstream_failure_mid_stream_ends_with_an_error_and_nothing_after() -> None:
    translator = ChatStreamToMessagesStream("claude-x", "msg_1")
    events = translator.feed(text("Hel")) + translator.fail("engine connection lost")
    check_messages_stream(events)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "engine connection lost"}},
    )
    assert not any(n in ("message_delta", "message_stop") for n, _ in events)
    for attempt in (
        translator.finish,
        lambda: translator.feed(text("x")),
        lambda: translator.fail("again"),
    ):
        with pytest.raises(TranslatorClosed):
            attempt()


def test_failure_before_any_chunk_is_just_the_error() -> None:
    events = translate([], fail="no engine")
    assert [n for n, _ in events] == ["error"]


def test_the_anthropic_sdk_raises_on_our_failure() -> None:
    anthropic = pytest.importorskip("anthropic")
    events = translate([text("partial")], fail="engine died")
    with pytest.raises(anthropic.APIStatusError, match="engine died"):
        final_message(events)


def test_feeding_after_finish_is_a_caller_bug() -> None:
    translator = ChatStreamToMessagesStream("m", "msg_1")
    translator.finish()
    with pytest.raises(TranslatorClosed):
        translator.feed(text("late"))


def test_engines_that_omit_tool_call_indexes() -> None:
    no_index = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    second = {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
    events = translate(
        [chunk({"tool_calls": [no_index]}), chunk({"tool_calls": [second]}), chunk(finish="stop")]
    )
    message = final_message(events)
    assert [(b.id, b.input) for b in message.content] == [("c1", {"a": 1}), ("c2", {})]
    assert message.stop_reason == "tool_use"


def test_other_choices_are_ignored_and_bad_chunks_rejected() -> None:
    other = chunk({"content": "other"})
    other["choices"][0]["index"] = 1
    events = translate([other, text("mine"), chunk(finish="stop")])
    assert final_message(events).content[0].text == "mine"
    with pytest.raises(MalformedUpstream):
        ChatStreamToMessagesStream("m", "msg_1").feed(["not", "a", "chunk"])  # type: ignore[arg-type]


# --- Hypothesis ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(realistic_streams())
def test_random_realistic_streams_accumulate_to_the_right_message(
    stream: tuple[list[dict[str, Any]], list[str], list[dict[str, Any]], str | None],
) -> None:
    chunks, texts, tools, finish = stream
    message = final_message(translate(chunks))
    expected: list[dict[str, Any]] = [{"type": "text", "text": "".join(texts)}] if texts else []
    expected += [{"type": "tool_use", **tool} for tool in tools]
    assert [
        b.model_dump(include={"type", "text", "id", "name", "input"}) for b in message.content
    ] == expected
    if finish == "length":
        assert message.stop_reason == "max_tokens"
    elif tools or finish == "tool_calls":
        assert message.stop_reason == "tool_use"
    else:
        assert message.stop_reason == "end_turn"


@settings(max_examples=300, deadline=None)
@given(st.lists(any_chunk, max_size=25), st.none() | st.text(max_size=10))
def test_any_chunk_sequence_gives_a_well_formed_stream(
    chunks: list[dict[str, Any]], fail: str | None
) -> None:
    translate(chunks, fail=fail)  # checks the grammar and the SDK's event models
