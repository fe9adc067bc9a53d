"""OpenAI chat.completion.chunk streams -> Responses API stream events.

Checked three ways: a grammar check below (sequence numbers, items opened before their
content and closed once), the openai SDK's event models, and the Response the SDK's
own ResponseStreamState accumulates from our events, over bytes fed whole and one byte
at a time. Hypothesis then walks random sequences through the same checks.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.dialects import (
    ChatStreamToResponsesStream,
    MalformedUpstream,
    SSEDecoder,
    TranslatorClosed,
    sse_bytes,
)
from tests.dialects.conformance import openai_client
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
REQUEST = {"model": "gpt-x", "input": "hi", "instructions": "Be brief.", "max_output_tokens": 9}
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def translate(
    chunks: list[dict[str, Any]], *, fail: str | None = None, request: Any = None
) -> list[Event]:
    translator = ChatStreamToResponsesStream(
        request or REQUEST, response_id="resp_1", model="gpt-x", created_at=1700000000
    )
    events: list[Event] = []
    for c in chunks:
        events += translator.feed(c)
    events += translator.fail(fail) if fail is not None else translator.finish()
    check_responses_stream(events)
    return events


def check_responses_stream(events: list[Event]) -> None:
    """The grammar: created, in_progress, items each added, filled and done at their own
    output_index (0, 1, 2... in order of addition), one terminal event last; every event
    named by its type, numbered from 0, and valid as the SDK's ResponseStreamEvent."""
    models = _event_models()
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1][0] in _TERMINAL
    assert all(name not in _TERMINAL for name, _ in events[:-1])
    open_items: dict[int, str] = {}
    done: set[int] = set()
    for name, data in events:
        assert data["type"] == name
        assert models[name].model_validate(data).type == name
        if name == "response.output_item.added":
            assert data["output_index"] == len(open_items) + len(done) - len(
                done & open_items.keys()
            )
            open_items[data["output_index"]] = data["item"]["type"]
        elif name == "response.output_item.done":
            assert data["output_index"] in open_items and data["output_index"] not in done
            done.add(data["output_index"])
        elif "output_index" in data:
            index = data["output_index"]
            assert index in open_items and index not in done, f"{name} outside its item"
            expected = "message" if "content_index" in data else "function_call"
            assert open_items[index] == expected
    if events[-1][0] != "response.failed":
        assert done == set(open_items), "items left open"
        assert events[-1][1]["response"]["output"] == [
            data["item"] for name, data in events if name == "response.output_item.done"
        ]


def _event_models() -> dict[str, Any]:
    """The SDK's model of each Responses stream event, by its type (the union is not
    discriminated, so validating against it reports every member's complaints)."""
    types = pytest.importorskip("openai.types.responses")
    union = typing.get_args(types.ResponseStreamEvent)[0]
    return {
        typing.get_args(model.model_fields["type"].annotation)[0]: model
        for model in typing.get_args(union)
    }


def accumulate(events: list[Event], *, split: bool = False) -> Any:
    """The Response the openai SDK's `responses.stream()` helper builds from our bytes
    (fed to it through an in-memory transport), the bytes decoded back first whole or
    one byte at a time."""
    body = sse_bytes(events)
    decoder = SSEDecoder()
    pieces = [body[i : i + 1] for i in range(len(body))] if split else [body]
    decoded = [e for piece in pieces for e in decoder.feed(piece)] + decoder.finish()
    assert [(e.event, json.loads(e.data)) for e in decoded] == events
    client = openai_client(lambda _: (200, "text/event-stream", body))
    with client.responses.stream(model="gpt-x", input="hi") as stream:
        seen = list(stream)
        last = seen[-1]
        if last.type == "response.completed":
            return stream.get_final_response()
        return last.response  # incomplete: the SDK's helper gives no final response then


def test_text_only_stream_is_exactly_the_responses_grammar() -> None:
    events = translate([ROLE, text("Hel"), text("lo"), chunk(finish="stop"), usage(9, 2)])
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["instructions"] == "Be brief." and created["max_output_tokens"] == 9
    item_id = events[2][1]["item"]["id"]
    assert events[4][1] == {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
    }
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["usage"] == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 11,
    }
    for split in (False, True):
        response = accumulate(events, split=split)
        assert response.output_text == "Hello" and response.id == "resp_1"


def test_a_reply_cut_at_the_cap_is_incomplete() -> None:
    events = translate([text("ab"), chunk(finish="length")])
    name, data = events[-1]
    assert name == "response.incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["response"]["output"][0]["status"] == "incomplete"
    # No usage from the engine (llama-cpp-python's streams): the deltas are the count.
    assert data["response"]["usage"]["output_tokens"] == 1


def test_text_then_a_tool_call_accumulates_in_the_sdk() -> None:
    events = translate(
        [
            text("Let me check."),
            tool_start(0, "call_1", "get_weather", '{"city":'),
            tool_args(0, '"Paris"}'),
            chunk(finish="tool_calls"),
        ]
    )
    names = [name for name, _ in events]
    assert names.count("response.function_call_arguments.delta") == 2
    assert names[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    response = accumulate(events, split=True)
    message, call = response.output
    assert message.type == "message" and response.output_text == "Let me check."
    assert (call.type, call.call_id, call.name) == ("function_call", "call_1", "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_interleaved_parallel_calls_keep_their_own_items() -> None:
    events = translate(
        [
            tool_start(0, "a", "f", '{"x":'),
            tool_start(1, "b", "g", '{"y":'),
            tool_args(1, "2}"),
            tool_args(0, "1}"),
            chunk(finish="tool_calls"),
        ]
    )
    response = accumulate(events)
    assert [(c.call_id, json.loads(c.arguments)) for c in response.output] == [
        ("a", {"x": 1}),
        ("b", {"y": 2}),
    ]


def test_text_after_tool_calls_opens_a_new_message() -> None:
    events = translate([tool_start(0, "a", "f", "{}"), text("done"), chunk(finish="stop")])
    response = accumulate(events)
    assert [item.type for item in response.output] == ["function_call", "message"]


def test_upstream_failure_mid_stream_ends_with_response_failed_and_nothing_after() -> None:
    translator = ChatStreamToResponsesStream(
        REQUEST, response_id="resp_1", model="gpt-x", created_at=1
    )
    events = translator.feed(text("Hel"))
    events += translator.fail("the engine died")
    check_responses_stream(events)
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"] == {"code": "server_error", "message": "the engine died"}
    with pytest.raises(TranslatorClosed):
        translator.feed(text("x"))
    with pytest.raises(TranslatorClosed):
        translator.fail("again")


def test_failure_before_any_chunk_still_opens_the_response() -> None:
    events = translate([], fail="no engine")
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]


def test_bad_chunks_are_rejected() -> None:
    translator = ChatStreamToResponsesStream(REQUEST, response_id="r", model="m", created_at=1)
    with pytest.raises(MalformedUpstream):
        translator.feed(["not", "a", "chunk"])  # type: ignore[arg-type]


def test_the_final_response_is_kept_for_the_conversation() -> None:
    translator = ChatStreamToResponsesStream(REQUEST, response_id="r", model="m", created_at=1)
    translator.feed(text("hi"))
    assert translator.response is None and not translator.done
    translator.finish()
    assert translator.done and translator.response is not None
    assert translator.response["output"][0]["content"][0]["text"] == "hi"


# --- Hypothesis ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(realistic_streams())
def test_random_realistic_streams_accumulate_to_the_right_response(
    stream: tuple[list[dict[str, Any]], list[str], list[dict[str, Any]], str | None],
) -> None:
    chunks, texts, tools, finish = stream
    events = translate(chunks)
    response = accumulate(events)
    assert response.output_text == "".join(texts)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [
        {"id": c.call_id, "name": c.name, "input": json.loads(c.arguments)} for c in calls
    ] == tools
    assert response.status == ("incomplete" if finish == "length" else "completed")


@settings(max_examples=300, deadline=None)
@given(st.lists(any_chunk, max_size=25), st.none() | st.text(max_size=10))
def test_any_chunk_sequence_gives_a_well_formed_stream(
    chunks: list[dict[str, Any]], fail: str | None
) -> None:
    translate(chunks, fail=fail)  # the grammar and the SDK's event models
