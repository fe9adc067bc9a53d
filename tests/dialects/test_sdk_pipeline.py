"""The whole translation path with the official SDKs at the client end.

A real `anthropic.Anthropic` (or `openai.OpenAI`) client sends its request through an
in-memory transport to a handler that does what Gate's service layer will do: translate
the request, hand it to a scripted engine of the other dialect, translate the answer
back. The SDK then reads our bytes as it would read its vendor's. A tool-use loop runs
in both directions, streamed and not.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from gate.dialects import (
    SSE_DONE,
    ChatStreamToMessagesStream,
    MessagesStreamToChatStream,
    chat_request_to_messages,
    chat_response_to_message,
    chat_sse_bytes,
    message_to_chat_response,
    messages_to_chat_request,
    sse_bytes,
)
from tests.dialects.conformance import anthropic_client, openai_client, validate_params
from tests.dialects.streams import chunk, text, tool_args, tool_start, usage

WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def openai_engine(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A scripted OpenAI-dialect engine: asks for the weather, then answers with it."""
    last = request["messages"][-1]
    if last["role"] == "tool":
        return [text("It is "), text(last["content"]), chunk(finish="stop"), usage(40, 4)]
    return [
        text("Let me look."),
        tool_start(0, "call_w", "get_weather", '{"city":'),
        tool_args(0, ' "Oslo"}'),
        chunk(finish="tool_calls"),
        usage(30, 12),
    ]


def as_completion(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The same script as one chat.completion, for non-streaming requests."""
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for call in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
            entry = calls.setdefault(
                call["index"],
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": "", "arguments": ""},
                },
            )
            entry["function"]["name"] += call["function"].get("name") or ""
            entry["function"]["arguments"] += call["function"].get("arguments") or ""
    finish = next(
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"]
    )
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "llama",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": chunks[-1]["usage"],
    }


def gate_for_anthropic_clients(seen: list[dict[str, Any]]) -> Any:
    """What Gate does for an Anthropic client in front of an OpenAI engine."""
    chat_params = pytest.importorskip("openai.types.chat.completion_create_params")

    def handle(body: dict[str, Any]) -> tuple[int, str, bytes]:
        request = messages_to_chat_request(body)
        validate_params(chat_params.CompletionCreateParamsBase, request)
        seen.append(request)
        chunks = openai_engine(request)
        if not request.get("stream"):
            message = chat_response_to_message(as_completion(chunks), model=body["model"])
            return 200, "application/json", msgspec.json.encode(message)
        translator = ChatStreamToMessagesStream(body["model"], "msg_stream")
        events = [e for c in chunks for e in translator.feed(c)] + translator.finish()
        return 200, "text/event-stream", sse_bytes(events)

    return handle


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "create"])
def test_anthropic_client_runs_a_tool_loop_against_an_openai_engine(streamed: bool) -> None:
    seen: list[dict[str, Any]] = []
    client = anthropic_client(gate_for_anthropic_clients(seen))
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]

    def ask() -> Any:
        kwargs = {
            "model": "claude-x",
            "max_tokens": 256,
            "system": "Be brief.",
            "tools": [WEATHER],
            "messages": messages,
        }
        if not streamed:
            return client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as stream:
            return stream.get_final_message()

    first = ask()
    assert first.stop_reason == "tool_use"
    assert first.content[0].text == "Let me look."
    tool = first.content[1]
    assert (tool.name, tool.input) == ("get_weather", {"city": "Oslo"})
    assert (first.usage.input_tokens, first.usage.output_tokens) == (30, 12)

    messages += [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "-3C"}],
        },
    ]
    second = ask()
    assert (second.stop_reason, second.content[0].text) == ("end_turn", "It is -3C")

    # What the engine was sent on the second turn, in its own dialect:
    assert seen[1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": "-3C"},
    ]
    assert seen[1]["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert seen[1].get("stream_options") == ({"include_usage": True} if streamed else None)


def anthropic_engine(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A scripted Anthropic-dialect engine: the same two turns, as Messages events."""
    last = request["messages"][-1]["content"][0]
    message = {
        "id": "msg_e",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("ping", {"type": "ping"}),
    ]

    def block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))

    if last["type"] == "tool_result":
        block(
            0,
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": f"It is {last['content']}"}],
        )
        stop = "end_turn"
    else:
        block(0, {"type": "text", "text": ""}, [{"type": "text_delta", "text": "Let me look."}])
        tool = {"type": "tool_use", "id": "toolu_w", "name": "get_weather", "input": {}}
        block(1, tool, [{"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}])
        stop = "tool_use"
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": {"output_tokens": 9},
    }
    return [*events, ("message_delta", delta), ("message_stop", {"type": "message_stop"})]


def as_message(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The same script as one Message, for non-streaming requests."""
    message = dict(events[0][1]["message"])
    content: list[dict[str, Any]] = []
    for name, data in events:
        if name == "content_block_start":
            content.append(dict(data["content_block"]))
        elif name == "content_block_delta" and data["delta"]["type"] == "text_delta":
            content[-1]["text"] += data["delta"]["text"]
        elif name == "content_block_delta":
            content[-1]["input"] = json.loads(data["delta"]["partial_json"])
        elif name == "message_delta":
            message["stop_reason"] = data["delta"]["stop_reason"]
            message["usage"] = {**message["usage"], **data["usage"]}
    return {**message, "content": content}


def gate_for_openai_clients(seen: list[dict[str, Any]]) -> Any:
    """What Gate does for an OpenAI client in front of the Anthropic API."""
    message_params = pytest.importorskip("anthropic.types.message_create_params")

    def handle(body: dict[str, Any]) -> tuple[int, str, bytes]:
        request = chat_request_to_messages(body)
        validate_params(message_params.MessageCreateParamsBase, request)
        seen.append(request)
        events = anthropic_engine(request)
        if not request.get("stream"):
            completion = message_to_chat_response(
                as_message(events), model=body["model"], created=5
            )
            return 200, "application/json", msgspec.json.encode(completion)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translator = MessagesStreamToChatStream(
            body["model"], "chatcmpl-s", created=5, include_usage=include_usage
        )
        chunks = [c for name, data in events for c in translator.feed(name, data)]
        return 200, "text/event-stream", chat_sse_bytes(chunks) + SSE_DONE

    return handle


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "create"])
def test_openai_client_runs_a_tool_loop_against_the_anthropic_api(streamed: bool) -> None:
    seen: list[dict[str, Any]] = []
    client = openai_client(gate_for_openai_clients(seen))
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
        }
    ]
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]

    def ask() -> Any:
        if not streamed:
            return client.chat.completions.create(model="gpt-x", messages=messages, tools=tools)
        with client.chat.completions.stream(
            model="gpt-x", messages=messages, tools=tools, stream_options={"include_usage": True}
        ) as stream:
            return stream.get_final_completion()

    first = ask()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_w",
        "get_weather",
        {"city": "Oslo"},
    )
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (30, 9)

    messages += [
        {
            "role": "assistant",
            "content": choice.message.content,
            "tool_calls": [call.model_dump(include={"id", "type", "function"})],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "-3C"},
    ]
    second = ask()
    assert (second.choices[0].finish_reason, second.choices[0].message.content) == (
        "stop",
        "It is -3C",
    )

    assert seen[1]["system"] == "Be brief."
    assert seen[1]["max_tokens"] == 4096
    assert seen[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_w",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_w", "content": "-3C"}],
        },
    ]
