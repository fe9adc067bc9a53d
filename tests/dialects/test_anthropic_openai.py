"""Anthropic Messages requests -> OpenAI Chat Completions, and responses back: tables.

Every input is first validated as the SDK of its dialect defines it (so the cases are
real requests and responses), and every output as the SDK of the other dialect does.
"""

from __future__ import annotations

from typing import Any

import pytest

from gate.dialects import (
    RAW_ARGUMENTS_KEY,
    InvalidRequest,
    MalformedUpstream,
    chat_response_to_message,
    messages_to_chat_request,
)
from tests.dialects.conformance import validate_params

USER_HI = {"role": "user", "content": "hi"}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": WEATHER_TOOL["input_schema"],
        "description": "Weather for a city",
    },
}


def req(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100, "messages": messages, **extra}


def chat(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "messages": messages, "max_tokens": 100, **extra}


REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("minimal", req([USER_HI]), chat([USER_HI])),
    (
        "system string",
        req([USER_HI], system="Be brief."),
        chat([{"role": "system", "content": "Be brief."}, USER_HI]),
    ),
    (
        "system blocks joined",
        req([USER_HI], system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]),
        chat([{"role": "system", "content": "A\nB"}, USER_HI]),
    ),
    (
        "multi-turn",
        req(
            [USER_HI, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
        ),
        chat(
            [USER_HI, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
        ),
    ),
    (
        "text blocks become one string",
        req(
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ]
        ),
        chat([{"role": "user", "content": "a\nb"}]),
    ),
    (
        "images become image_url parts",
        req(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": PNG},
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
                        {"type": "text", "text": "what is this?"},
                    ],
                }
            ]
        ),
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
                        {"type": "text", "text": "what is this?"},
                    ],
                }
            ]
        ),
    ),
    (
        "documents",
        req(
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                        },
                        {
                            "type": "document",
                            "title": "a.pdf",
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
        chat(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "notes"},
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
    ),
    (
        "tool use and result round",
        req(
            [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {
                            "type": "tool_use",
                            "id": "toolu_2",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "timeout"},
                                {"type": "text", "text": "retry"},
                            ],
                        },
                        {"type": "text", "text": "and?"},
                    ],
                },
            ],
            tools=[WEATHER_TOOL],
        ),
        chat(
            [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout\nretry"},
                {"role": "user", "content": "and?"},
            ],
            tools=[WEATHER_FUNCTION],
        ),
    ),
    (
        "tool use alone has empty-string content; image in a result moves to a user message",
        req(
            [
                USER_HI,
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [
                                {"type": "text", "text": "ok"},
                                {"type": "image", "source": PNG},
                            ],
                        }
                    ],
                },
            ]
        ),
        chat(
            [
                USER_HI,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "shot", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "t", "content": "ok"},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        }
                    ],
                },
            ]
        ),
    ),
    (
        "sampling, stop, stream, user",
        req(
            [USER_HI],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END", "\n\n"],
            stream=True,
            metadata={"user_id": "u-1"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            service_tier="auto",
        ),
        chat(
            [USER_HI],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop=["END", "\n\n"],
            stream=True,
            stream_options={"include_usage": True},
            user="u-1",
        ),
    ),
    *[
        (
            f"tool_choice {name}",
            req([USER_HI], tools=[WEATHER_TOOL], tool_choice=choice),
            chat([USER_HI], tools=[WEATHER_FUNCTION], **expected),
        )
        for name, choice, expected in [
            ("auto", {"type": "auto"}, {"tool_choice": "auto"}),
            ("any", {"type": "any"}, {"tool_choice": "required"}),
            ("none", {"type": "none"}, {"tool_choice": "none"}),
            (
                "tool",
                {"type": "tool", "name": "get_weather"},
                {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            ),
            (
                "no parallel",
                {"type": "auto", "disable_parallel_tool_use": True},
                {"tool_choice": "auto", "parallel_tool_calls": False},
            ),
        ]
    ],
]


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS]
)
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    anthropic_params = pytest.importorskip("anthropic.types.message_create_params")
    openai_params = pytest.importorskip("openai.types.chat.completion_create_params")
    validate_params(anthropic_params.MessageCreateParamsNonStreaming, {**body, "stream": False})
    translated = messages_to_chat_request(body)
    assert translated == expected
    validate_params(
        openai_params.CompletionCreateParamsNonStreaming, {**translated, "stream": False}
    )


# `role: "system"` among the turns: not in the SDK's types (so not in the table, whose
# cases the SDK validates), but sent by Claude Code and taken by the Anthropic API.
SYSTEM_MESSAGES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "system message after the first turn",
        req([USER_HI, {"role": "system", "content": "Mind the cwd."}]),
        chat([{"role": "system", "content": "Mind the cwd."}, USER_HI]),
    ),
    (
        "system messages join the system prompt, in order, cache_control dropped",
        req(
            [
                USER_HI,
                {"role": "system", "content": "Mid."},
                {"role": "assistant", "content": "hello"},
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "B"},
                    ],
                },
                {"role": "user", "content": "and?"},
            ],
            system="Top.",
        ),
        chat(
            [
                {"role": "system", "content": "Top.\n\nMid.\n\nA\nB"},
                USER_HI,
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and?"},
            ]
        ),
    ),
    (
        "an empty system message adds nothing",
        req([USER_HI, {"role": "system", "content": ""}]),
        chat([USER_HI]),
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [c[1:] for c in SYSTEM_MESSAGES],
    ids=[c[0] for c in SYSTEM_MESSAGES],
)
def test_system_messages_among_the_turns(body: dict[str, Any], expected: dict[str, Any]) -> None:
    openai_params = pytest.importorskip("openai.types.chat.completion_create_params")
    translated = messages_to_chat_request(body)
    assert translated == expected
    validate_params(
        openai_params.CompletionCreateParamsNonStreaming, {**translated, "stream": False}
    )


BAD_REQUESTS: list[tuple[str, Any, str | None]] = [
    ("not an object", [], None),
    ("no model", {"messages": [USER_HI]}, "model"),
    ("messages not a list", {"model": "m", "messages": "hi"}, "messages"),
    ("unknown role in messages", req([{"role": "developer", "content": "x"}]), "messages.0.role"),
    (
        "system message not text",
        req([USER_HI, {"role": "system", "content": [{"type": "image", "source": PNG}]}]),
        "messages.1.content.0",
    ),
    ("content not text or list", req([{"role": "user", "content": 3}]), "messages.0.content"),
    (
        "file image source",
        req(
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                }
            ]
        ),
        "messages.0.content.0.source",
    ),
    (
        "server block",
        req([{"role": "user", "content": [{"type": "search_result", "source": "x"}]}]),
        "messages.0.content.0.type",
    ),
    (
        "server tool",
        req([USER_HI], tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        "tools.0.type",
    ),
    (
        "unknown tool_choice",
        req([USER_HI], tools=[WEATHER_TOOL], tool_choice={"type": "x"}),
        "tool_choice.type",
    ),
    ("system not text", req([USER_HI], system=[{"type": "image", "source": PNG}]), "system.0"),
]


@pytest.mark.parametrize(
    ("body", "param"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_untranslatable_requests_are_400(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        messages_to_chat_request(body)
    assert info.value.status == 400
    assert info.value.param == param


def completion(
    message: dict[str, Any], finish: str | None = "stop", **choice: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "llama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish,
                **choice,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def message(
    content: list[dict[str, Any]], stop: str, stop_sequence: str | None = None
) -> dict[str, Any]:
    return {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


def tool_use(call_id: str, name: str, input_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": input_}


TEXT_HELLO = {"type": "text", "text": "Hello"}

RESPONSES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("text", completion({"content": "Hello"}), message([TEXT_HELLO], "end_turn")),
    ("max tokens", completion({"content": "Hello"}, "length"), message([TEXT_HELLO], "max_tokens")),
    (
        "content filter",
        completion({"content": "Hello"}, "content_filter"),
        message([TEXT_HELLO], "refusal"),
    ),
    ("empty content", completion({"content": ""}), message([], "end_turn")),
    ("null content", completion({"content": None}), message([], "end_turn")),
    (
        "text then tool calls",
        completion(
            {
                "content": "Let me check.",
                "tool_calls": [
                    call("call_1", "get_weather", '{"city": "Paris"}'),
                    call("call_2", "noop", ""),
                ],
            },
            "tool_calls",
        ),
        message(
            [
                {"type": "text", "text": "Let me check."},
                tool_use("call_1", "get_weather", {"city": "Paris"}),
                tool_use("call_2", "noop", {}),
            ],
            "tool_use",
        ),
    ),
    (
        "tool calls reported as stop (Ollama)",
        completion({"content": None, "tool_calls": [call("c", "f", "{}")]}, "stop"),
        message([tool_use("c", "f", {})], "tool_use"),
    ),
    (
        "legacy function_call beside tool_calls (llama.cpp): one call",
        completion(
            {
                "content": None,
                "tool_calls": [call("call_1", "get_weather", '{"city": "Paris"}')],
                "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            "tool_calls",
        ),
        message([tool_use("call_1", "get_weather", {"city": "Paris"})], "tool_use"),
    ),
    (
        "legacy function_call alone",
        completion(
            {"content": None, "function_call": {"name": "f", "arguments": "{}"}},
            "function_call",
        ),
        message([tool_use("toolu_msg_abc_0", "f", {})], "tool_use"),
    ),
    (
        "invalid arguments kept raw",
        completion({"content": None, "tool_calls": [call("c", "f", '{"a": ')]}, "tool_calls"),
        message([tool_use("c", "f", {RAW_ARGUMENTS_KEY: '{"a": '})], "tool_use"),
    ),
    (
        "non-object arguments kept raw",
        completion({"content": None, "tool_calls": [call("c", "f", "[1, 2]")]}, "tool_calls"),
        message([tool_use("c", "f", {RAW_ARGUMENTS_KEY: "[1, 2]"})], "tool_use"),
    ),
    (
        "stop sequence reported by vLLM",
        completion({"content": "Hello"}, "stop", stop_reason="END"),
        message([TEXT_HELLO], "stop_sequence", "END"),
    ),
    (
        "EOS reported by vLLM as null",
        completion({"content": "Hello"}, "stop", stop_reason=None),
        message([TEXT_HELLO], "end_turn"),
    ),
    (
        "refusal",
        completion({"content": None, "refusal": "I can't."}, "content_filter"),
        message([{"type": "text", "text": "I can't."}], "refusal"),
    ),
]


@pytest.mark.parametrize(
    ("resp", "expected"), [c[1:] for c in RESPONSES], ids=[c[0] for c in RESPONSES]
)
def test_response_translation(resp: dict[str, Any], expected: dict[str, Any]) -> None:
    chat_types = pytest.importorskip("openai.types.chat")
    anthropic_types = pytest.importorskip("anthropic.types")
    if resp["choices"][0]["finish_reason"] is not None:
        chat_types.ChatCompletion.model_validate(resp)
    translated = chat_response_to_message(resp, model="claude-x")
    assert translated == expected
    anthropic_types.Message.model_validate(translated)


def test_cached_prompt_tokens_are_reported_as_cache_reads() -> None:
    resp = completion({"content": "Hello"})
    resp["usage"] = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "total_tokens": 105,
        "prompt_tokens_details": {"cached_tokens": 80},
    }
    usage = chat_response_to_message(resp, model="m")["usage"]
    assert usage == {"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 80}


def test_ids_missing_from_the_engine_are_made_up() -> None:
    resp = completion(
        {
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    )
    del resp["id"]
    translated = chat_response_to_message(resp, model="m")
    assert translated["id"].startswith("msg_") and len(translated["id"]) > 8
    assert translated["content"][0]["id"] == f"toolu_{translated['id']}_0"
    assert chat_response_to_message(resp, model="m", message_id="msg_x")["id"] == "msg_x"


@pytest.mark.parametrize("resp", [{}, {"choices": []}, {"choices": ["x"]}, []])
def test_a_response_without_choices_is_an_upstream_error(resp: Any) -> None:
    with pytest.raises(MalformedUpstream) as info:
        chat_response_to_message(resp, model="m")
    assert info.value.status == 502
