"""Responses API requests -> Chat Completions, and chat completions back as responses.

Inputs are what the openai SDK (and Codex CLI) send; every chat request is validated as
the SDK's own request type, every response object as its `Response` model.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from gate.dialects import (
    InvalidRequest,
    MalformedUpstream,
    assistant_turn,
    chat_response_to_response,
    responses_to_chat_request,
)
from tests.dialects.conformance import openai_client, validate_params

CODEX = pathlib.Path(__file__).parent.parent / "fixtures/clients/codex_responses_source.json"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    request, _ = responses_to_chat_request(body, history or [])
    types = pytest.importorskip("openai.types.chat")
    validate_params(types.CompletionCreateParams, request)
    return request


def test_a_string_input_with_instructions() -> None:
    request = chat(
        {
            "model": "m",
            "input": "hi",
            "instructions": "Be brief.",
            "max_output_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "stream": True,
        }
    )
    assert request == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_message_items_parts_and_roles() -> None:
    request = chat(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Rules."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Look:"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
                {"role": "system", "content": [{"type": "input_text", "text": "More rules."}]},
                {"role": "user", "content": [{"type": "input_text", "text": "Sure?"}]},
            ],
        }
    )
    assert request["messages"] == [
        {"role": "system", "content": "Rules.\n\nMore rules."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]


def test_function_calls_and_their_outputs_make_one_assistant_turn() -> None:
    request = chat(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"a":1}'},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"a":2}'},
                {"type": "function_call_output", "call_id": "c1", "output": "10 C"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [
                        {"type": "input_text", "text": "5 C"},
                        {"type": "input_image", "image_url": "https://x/map.png"},
                    ],
                },
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            ],
        }
    )
    assert request["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"a":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "w", "arguments": '{"a":2}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "10 C"},
        {"role": "tool", "tool_call_id": "c2", "content": "5 C"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/map.png"}}],
        },
    ]


def test_tools_tool_choice_and_text_format() -> None:
    request = chat(
        {
            "model": "m",
            "input": "hi",
            "tools": [WEATHER, {"type": "web_search"}, {"type": "custom", "name": "apply_patch"}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
            "text": {
                "format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}},
                "verbosity": "low",
            },
        }
    )
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": "Weather",
                "strict": True,
            },
        }
    ]
    assert request["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert request["parallel_tool_calls"] is False
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}},
    }


def test_allowed_tools_and_tool_choice_without_function_tools() -> None:
    other = {**WEATHER, "name": "other"}
    request = chat(
        {
            "model": "m",
            "input": "hi",
            "tools": [WEATHER, other],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "other"}],
            },
        }
    )
    assert [t["function"]["name"] for t in request["tools"]] == ["other"]
    assert request["tool_choice"] == "required"
    # Only hosted tools: the model sees none, and "auto" goes unsaid.
    assert "tools" not in chat({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input.0"),
        (
            {
                "model": "m",
                "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}],
            },
            "input.0.content.0",
        ),
        ({"model": "m", "input": "hi", "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"model": "m", "input": "hi", "tool_choice": "required"}, "tool_choice"),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input.0"),
    ],
)
def test_what_cannot_be_sent_is_a_400_naming_the_parameter(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        responses_to_chat_request(body)
    assert caught.value.status == 400 and caught.value.param == param


def test_history_comes_first_and_the_turns_are_kept_without_instructions() -> None:
    history = [
        {"role": "user", "content": "Hi, I am Ada."},
        {"role": "assistant", "content": "Hello"},
    ]
    request, turns = responses_to_chat_request(
        {"model": "m", "input": "Who am I?", "instructions": "Be brief."}, history
    )
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        *history,
        {"role": "user", "content": "Who am I?"},
    ]
    assert turns == [*history, {"role": "user", "content": "Who am I?"}]


def test_the_codex_cli_request_translates() -> None:
    body = json.loads(CODEX.read_text())
    request = chat(body)
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["system", "user", "user", "user", "assistant", "tool", "assistant", "user"]
    system = request["messages"][0]["content"]
    assert system.startswith("You are Codex") and "<permissions instructions>" in system
    assert [t["function"]["name"] for t in request["tools"]] == [
        "shell",
        "update_plan",
        "view_image",
    ]
    assert request["tool_choice"] == "auto" and request["parallel_tool_calls"] is False
    for dropped in ("store", "include", "reasoning", "prompt_cache_key", "text"):
        assert dropped not in request


# --- responses -----------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "llama",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        **extra,
    }


def respond(resp: dict[str, Any], request: dict[str, Any] | None = None) -> Any:
    """Our response object, as the openai SDK's `responses.create` returns it."""
    body = chat_response_to_response(
        resp,
        request or {"model": "m", "input": "hi"},
        response_id="resp_1",
        model="m",
        created_at=5,
    )
    types = pytest.importorskip("openai.types.responses")
    types.Response.model_validate(body)  # strictly, all required fields
    client = openai_client(lambda _: (200, "application/json", json.dumps(body).encode()))
    return client.responses.create(model="m", input="hi"), body


def test_a_text_completion() -> None:
    response, body = respond(
        completion({"content": "Hello"}), {"model": "m", "input": "hi", "temperature": 0.5}
    )
    assert response.output_text == "Hello" and response.status == "completed"
    assert response.temperature == 0.5 and response.tool_choice == "auto"
    assert response.usage.input_tokens == 7 and response.usage.total_tokens == 10
    assert body["object"] == "response" and body["created_at"] == 5


def test_tool_calls_and_the_legacy_function_call_once() -> None:
    call = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    response, _ = respond(
        completion(
            {
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": call}],
                "function_call": call,
            },
            "tool_calls",
        )
    )
    (item,) = response.output
    assert (item.type, item.call_id, item.name, item.arguments) == (
        "function_call",
        "c1",
        "get_weather",
        '{"city":"Paris"}',
    )


def test_a_reply_cut_at_the_cap_and_a_refusal() -> None:
    response, _ = respond(completion({"content": "Hel"}, "length"))
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    refused, _ = respond(completion({"content": None, "refusal": "No."}))
    assert refused.output[0].content[0].type == "refusal"


def test_no_choices_is_the_engine_failing() -> None:
    with pytest.raises(MalformedUpstream):
        chat_response_to_response({"choices": []}, {}, response_id="r", model="m", created_at=1)


def test_the_assistant_turn_of_an_output() -> None:
    _, body = respond(
        completion(
            {
                "content": "Checking.",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "tool_calls",
        )
    )
    assert assistant_turn(body["output"]) == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert assistant_turn([]) is None
