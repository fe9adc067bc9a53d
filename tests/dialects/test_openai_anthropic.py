"""OpenAI Chat Completions requests -> Anthropic Messages, and responses back: tables.

Inputs validate as their own SDK defines them; outputs as the other SDK does.
"""

from __future__ import annotations

from typing import Any

import pytest

from gate.dialects import (
    DEFAULT_MAX_TOKENS,
    RAW_ARGUMENTS_KEY,
    InvalidRequest,
    chat_request_to_messages,
    message_to_chat_response,
)
from tests.dialects.conformance import validate_params

HI = {"role": "user", "content": "hi"}
HI_BLOCKS = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
FUNCTION_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": SCHEMA},
}
ANTHROPIC_TOOL = {"name": "get_weather", "input_schema": SCHEMA, "description": "Weather"}


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-x", "messages": messages, **extra}


def msgs(
    messages: list[dict[str, Any]], max_tokens: int = DEFAULT_MAX_TOKENS, **extra: Any
) -> dict[str, Any]:
    return {"model": "gpt-x", "max_tokens": max_tokens, "messages": messages, **extra}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def call(call_id: str, arguments: str, name: str = "get_weather") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("minimal, default max_tokens", chat([HI]), msgs([HI_BLOCKS])),
    (
        "max_completion_tokens wins",
        chat([HI], max_tokens=5, max_completion_tokens=9),
        msgs([HI_BLOCKS], 9),
    ),
    ("deprecated max_tokens", chat([HI], max_tokens=5), msgs([HI_BLOCKS], 5)),
    (
        "one system message",
        chat([{"role": "system", "content": "Be brief."}, HI]),
        msgs([HI_BLOCKS], system="Be brief."),
    ),
    (
        "system and developer messages, anywhere",
        chat(
            [
                {"role": "system", "content": "A"},
                {"role": "developer", "content": [{"type": "text", "text": "B"}]},
                HI,
                {"role": "system", "content": "C"},
            ]
        ),
        msgs([HI_BLOCKS], system=[text("A"), text("B"), text("C")]),
    ),
    (
        "same-role messages merged",
        chat([HI, {"role": "user", "content": "there"}, {"role": "assistant", "content": "yo"}]),
        msgs(
            [
                {"role": "user", "content": [text("hi"), text("there")]},
                {"role": "assistant", "content": [text("yo")]},
            ]
        ),
    ),
    (
        "tool calls and tool results",
        chat(
            [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        call("call_1", '{"city": "Paris"}'),
                        call("call_2", '{"city": "Rome"}'),
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "20C"}],
                },
                {"role": "user", "content": "thanks"},
            ],
            tools=[FUNCTION_TOOL],
        ),
        msgs(
            [
                {"role": "user", "content": [text("weather in Paris and Rome?")]},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "call_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {
                            "type": "tool_use",
                            "id": "call_2",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": [text("20C")]},
                        text("thanks"),
                    ],
                },
            ],
            tools=[ANTHROPIC_TOOL],
        ),
    ),
    (
        "tool results move ahead of user text; bad arguments kept raw",
        chat(
            [
                HI,
                {"role": "assistant", "content": None, "tool_calls": [call("c", "{oops")]},
                {"role": "user", "content": "also"},
                {"role": "tool", "tool_call_id": "c", "content": ""},
            ]
        ),
        msgs(
            [
                HI_BLOCKS,
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "c",
                            "name": "get_weather",
                            "input": {RAW_ARGUMENTS_KEY: "{oops"},
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "c"}, text("also")],
                },
            ]
        ),
    ),
    (
        "images and files",
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBO", "detail": "high"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
                        {
                            "type": "file",
                            "file": {
                                "file_data": "data:application/pdf;base64,JVBE",
                                "filename": "a.pdf",
                            },
                        },
                    ],
                }
            ]
        ),
        msgs(
            [
                {
                    "role": "user",
                    "content": [
                        text("see"),
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBE",
                            },
                        },
                    ],
                }
            ]
        ),
    ),
    (
        "assistant refusal part is text; empty assistant dropped",
        chat(
            [
                HI,
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                {"role": "user", "content": "ok"},
                {"role": "assistant", "content": ""},
            ]
        ),
        msgs(
            [
                HI_BLOCKS,
                {"role": "assistant", "content": [text("No.")]},
                {"role": "user", "content": [text("ok")]},
            ]
        ),
    ),
    (
        "sampling, stop, stream, user; the rest ignored",
        chat(
            [HI],
            temperature=1.6,
            top_p=0.9,
            stop="END",
            stream=True,
            stream_options={"include_usage": True},
            user="u-1",
            seed=1,
            presence_penalty=0.5,
            response_format={"type": "json_object"},
            n=1,
        ),
        msgs(
            [HI_BLOCKS],
            temperature=1.0,
            top_p=0.9,
            stop_sequences=["END"],
            stream=True,
            metadata={"user_id": "u-1"},
        ),
    ),
    (
        "stop list",
        chat([HI], stop=["a", "b"], temperature=0.2),
        msgs([HI_BLOCKS], temperature=0.2, stop_sequences=["a", "b"]),
    ),
    *[
        (
            f"tool_choice {name}",
            chat([HI], tools=[FUNCTION_TOOL], **choice),
            msgs([HI_BLOCKS], tools=[ANTHROPIC_TOOL], **expected),
        )
        for name, choice, expected in [
            ("auto", {"tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
            ("required", {"tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
            ("none", {"tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
            (
                "function",
                {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
                {"tool_choice": {"type": "tool", "name": "get_weather"}},
            ),
            (
                "no parallel",
                {"parallel_tool_calls": False},
                {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
            ),
            (
                "required, no parallel",
                {"tool_choice": "required", "parallel_tool_calls": False},
                {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
            ),
        ]
    ],
]


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS]
)
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    openai_params = pytest.importorskip("openai.types.chat.completion_create_params")
    anthropic_params = pytest.importorskip("anthropic.types.message_create_params")
    validate_params(openai_params.CompletionCreateParamsNonStreaming, {**body, "stream": False})
    translated = chat_request_to_messages(body)
    assert translated == expected
    validate_params(
        anthropic_params.MessageCreateParamsNonStreaming, {**translated, "stream": False}
    )


BAD_REQUESTS: list[tuple[str, Any, str | None]] = [
    ("not an object", "x", None),
    ("no model", {"messages": [HI]}, "model"),
    ("no messages", {"model": "m"}, "messages"),
    ("n > 1", chat([HI], n=2), "n"),
    (
        "function role",
        chat([{"role": "function", "name": "f", "content": "x"}]),
        "messages[0].role",
    ),
    (
        "audio",
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}
                    ],
                }
            ]
        ),
        "messages[0].content[0]",
    ),
    (
        "file id",
        chat([{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]),
        "messages[0].content[0]",
    ),
    (
        "data URL not base64",
        chat(
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:text/plain,hi"}}],
                }
            ]
        ),
        "messages[0].content[0]",
    ),
    ("tool without id", chat([{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
    ("custom tool", chat([HI], tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0]"),
    ("bad tool_choice", chat([HI], tools=[FUNCTION_TOOL], tool_choice="sometimes"), "tool_choice"),
    (
        "custom tool call",
        chat(
            [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "custom", "custom": {"name": "x", "input": ""}}
                    ],
                }
            ]
        ),
        "messages[0].tool_calls[0]",
    ),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_untranslatable_requests_are_400(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        chat_request_to_messages(body)
    assert (info.value.status, info.value.param) == (400, param)


def message(content: list[dict[str, Any]], stop: str | None, **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 4, **usage},
    }


def completion(
    content: str | None, finish: str, tool_calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-x",
        "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
CALL = call("toolu_1", '{"city":"Paris"}')

RESPONSES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("text", message([text("Hello")], "end_turn"), completion("Hello", "stop")),
    (
        "text blocks concatenated",
        message([text("Hel"), text("lo")], "end_turn"),
        completion("Hello", "stop"),
    ),
    ("stop sequence", message([text("x")], "stop_sequence"), completion("x", "stop")),
    ("max tokens", message([text("x")], "max_tokens"), completion("x", "length")),
    ("refusal", message([text("x")], "refusal"), completion("x", "content_filter")),
    ("pause turn", message([text("x")], "pause_turn"), completion("x", "stop")),
    (
        "context window",
        message([text("x")], "model_context_window_exceeded"),
        completion("x", "length"),
    ),
    ("empty", message([], "end_turn"), completion("", "stop")),
    ("tool use only", message([TOOL_USE], "tool_use"), completion(None, "tool_calls", [CALL])),
    (
        "thinking dropped, text and tool use",
        message(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                text("Checking."),
                TOOL_USE,
            ],
            "tool_use",
        ),
        completion("Checking.", "tool_calls", [CALL]),
    ),
]


@pytest.mark.parametrize(
    ("msg", "expected"), [c[1:] for c in RESPONSES], ids=[c[0] for c in RESPONSES]
)
def test_response_translation(msg: dict[str, Any], expected: dict[str, Any]) -> None:
    anthropic_types = pytest.importorskip("anthropic.types")
    chat_types = pytest.importorskip("openai.types.chat")
    anthropic_types.Message.model_validate(msg)
    translated = message_to_chat_response(msg, model="gpt-x", created=1700000000)
    assert translated == expected
    chat_types.ChatCompletion.model_validate(translated)


def test_cache_tokens_count_as_prompt_tokens() -> None:
    msg = message(
        [text("x")], "end_turn", cache_read_input_tokens=30, cache_creation_input_tokens=5
    )
    assert message_to_chat_response(msg, model="m")["usage"] == {
        "prompt_tokens": 45,
        "completion_tokens": 4,
        "total_tokens": 49,
        "prompt_tokens_details": {"cached_tokens": 30},
    }
