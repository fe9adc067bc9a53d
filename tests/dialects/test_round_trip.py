"""There and back: each direction undoes the other on what both dialects can express."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gate.dialects import (
    ChatStreamToMessagesStream,
    MessagesStreamToChatStream,
    chat_request_to_messages,
    chat_response_to_message,
    message_to_chat_response,
    messages_to_chat_request,
)
from tests.dialects.conformance import accumulate_chat, check_chat_stream, check_messages_stream
from tests.dialects.streams import realistic_streams

words = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
json_objects = st.dictionaries(
    st.text(max_size=4), st.integers(-9, 9) | st.text(max_size=4) | st.none(), max_size=3
)


@st.composite
def anthropic_conversations(draw: st.DrawFn) -> dict[str, Any]:
    """Requests in the form the reverse translation produces: blocks everywhere, one
    text block per turn, tool results answering the previous turn's tool uses."""
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # tool_use ids the next user turn must answer
    for turn in range(draw(st.integers(1, 6))):
        if turn % 2 == 0:
            content = [
                {"type": "tool_result", "tool_use_id": call_id, "content": draw(words)}
                for call_id in pending
            ]
            if not content or draw(st.booleans()):
                content.append({"type": "text", "text": draw(words)})
            messages.append({"role": "user", "content": content})
            pending = []
        else:
            content = [{"type": "text", "text": draw(words)}] if draw(st.booleans()) else []
            for n in range(draw(st.integers(0 if content else 1, 2))):
                pending.append(f"toolu_{turn}_{n}")
                content.append(
                    {
                        "type": "tool_use",
                        "id": pending[-1],
                        "name": draw(words),
                        "input": draw(json_objects),
                    }
                )
            messages.append({"role": "assistant", "content": content})
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": draw(st.integers(1, 9999)),
        "messages": messages,
    }
    if draw(st.booleans()):
        body["system"] = draw(words)
    return body


@settings(max_examples=150)
@given(anthropic_conversations())
def test_anthropic_request_survives_openai_and_back(body: dict[str, Any]) -> None:
    assert chat_request_to_messages(messages_to_chat_request(body)) == body


@st.composite
def openai_conversations(draw: st.DrawFn) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(words)})
    for turn in range(draw(st.integers(1, 6))):
        messages.append({"role": "user", "content": draw(words)})
        calls = [
            {
                "id": f"call_{turn}_{n}",
                "type": "function",
                "function": {"name": draw(words), "arguments": json.dumps(draw(json_objects))},
            }
            for n in range(draw(st.integers(0, 2)))
        ]
        text = draw(words) if not calls or draw(st.booleans()) else None
        messages.append(
            {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
        )
        messages += [
            {"role": "tool", "tool_call_id": call["id"], "content": draw(words)} for call in calls
        ]
    return {"model": "m", "messages": messages, "max_tokens": draw(st.integers(1, 9999))}


def normalized_chat(body: dict[str, Any]) -> dict[str, Any]:
    """Tool arguments compared as JSON values, not as text; an assistant turn's null
    content beside tool calls is the same as "" (which Gate sends: engines accept it)."""
    messages = []
    for message in body["messages"]:
        message = dict(message)
        if "tool_calls" in message:
            if message.get("content") is None:
                message["content"] = ""
            message["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": json.loads(c["function"]["arguments"]),
                    },
                }
                for c in message["tool_calls"]
            ]
        messages.append(message)
    return {**body, "messages": messages}


@settings(max_examples=150)
@given(openai_conversations())
def test_openai_request_survives_anthropic_and_back(body: dict[str, Any]) -> None:
    back = messages_to_chat_request(chat_request_to_messages(body))
    assert normalized_chat(back) == normalized_chat(body)


@settings(max_examples=100)
@given(
    st.none() | words,
    st.lists(st.tuples(words, words, json_objects), max_size=3),
    st.sampled_from(["stop", "length", "tool_calls", "content_filter"]),
)
def test_responses_survive_both_ways(
    text: str | None, calls: list[tuple[str, str, dict[str, Any]]], finish: str
) -> None:
    if finish == "tool_calls" and not calls:
        finish = "stop"
    tool_calls = [
        {
            "id": f"c{n}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for n, (name, _, args) in enumerate(calls)
    ]
    if tool_calls and finish == "stop":
        finish = "tool_calls"  # a turn with tool calls always reads back as tool_calls
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    elif text is None:
        message["content"] = ""
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    resp = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 7,
        "model": "m",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }
    back = message_to_chat_response(chat_response_to_message(resp, model="m"), model="m", created=7)
    assert normalized_chat({"messages": [back["choices"][0]["message"]]}) == normalized_chat(
        {"messages": [message]}
    )
    assert back == {
        **resp,
        "choices": [{**resp["choices"][0], "message": back["choices"][0]["message"]}],
    }


@settings(max_examples=60, deadline=None)
@given(realistic_streams())
def test_streams_survive_anthropic_and_back(
    stream: tuple[list[dict[str, Any]], list[str], list[dict[str, Any]], str | None],
) -> None:
    """OpenAI chunks -> Anthropic events -> OpenAI chunks: the openai SDK accumulates the
    same completion (tool calls renumbered in order of appearance)."""
    chunks, texts, tools, finish = stream
    forward = ChatStreamToMessagesStream("m", "msg_1")
    events = [e for c in chunks for e in forward.feed(c)] + forward.finish()
    check_messages_stream(events)
    backward = MessagesStreamToChatStream("m", "chatcmpl-1", include_usage=True)
    back = [c for name, data in events for c in backward.feed(name, data)]
    check_chat_stream(back)
    choice = accumulate_chat(back).choices[0]
    # The role chunk carries content "" as OpenAI's does, so no text reads as "".
    assert choice.message.content == "".join(texts)
    got = [
        (c.id, c.function.name, json.loads(c.function.arguments or "{}"))
        for c in choice.message.tool_calls or []
    ]
    assert got == [(t["id"], t["name"], t["input"]) for t in tools]
    if finish == "length":
        assert choice.finish_reason == "length"
    elif tools or finish == "tool_calls":
        assert choice.finish_reason == "tool_calls"
    else:
        assert choice.finish_reason == "stop"
