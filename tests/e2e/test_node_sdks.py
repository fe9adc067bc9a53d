"""The official Node SDKs (`openai`, `@anthropic-ai/sdk`) through Gate, in front of llama.cpp.

Each case runs tests/clients/node/sdk_cases.mjs in node, as a user's program would, at the
versions tests/clients/node/package-lock.json pins.
"""

import pytest

from tests.clients.node_clients import run_sdk_case

from .conftest import engine_config

pytestmark = pytest.mark.e2e

MODEL = "tiny-llama"


@pytest.fixture
def gate_url(start_gate, llama_engine) -> str:
    return start_gate(engine_config(llama_engine)).url


def test_chat_completion_streamed(gate_url):
    seen = run_sdk_case("chat_stream", gate_url, MODEL)
    assert seen["text"] and seen["chunks"] >= 2
    assert seen["finish"] in ("stop", "length")
    # Usage is not checked: the case asks for stream_options.include_usage, but
    # llama-cpp-python ignores it and Gate relays an OpenAI engine's stream as it is.


def test_responses_not_streamed(gate_url):
    seen = run_sdk_case("responses", gate_url, MODEL)
    assert seen["object"] == "response" and seen["status"] in ("completed", "incomplete")
    assert "message" in seen["output_types"] and seen["output_text"]
    assert seen["usage"]["input_tokens"] > 0 and seen["usage"]["output_tokens"] >= 1


def test_responses_streamed(gate_url):
    seen = run_sdk_case("responses_stream", gate_url, MODEL)
    events = seen["events"]
    # OpenAI's documented order: created, in_progress, the item and its part open, text
    # deltas, then each closes, and completed (or incomplete at max_output_tokens).
    assert events[0] == "response.created"
    assert events[-1] in ("response.completed", "response.incomplete")
    for name in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert name in events, events
    assert events.index("response.output_item.added") < events.index("response.output_text.delta")
    assert seen["text"] and seen["usage"]["output_tokens"] >= 1


def test_embeddings(gate_url):
    seen = run_sdk_case("embeddings", gate_url, MODEL)
    assert seen["count"] == 2 and seen["dims"][0] == seen["dims"][1] > 0


def test_messages_streamed_with_tools(gate_url):
    seen = run_sdk_case("messages_stream_tools", gate_url, MODEL)
    assert seen["events"][0] == "message_start" and seen["events"][-1] == "message_stop"
    assert seen["stop_reason"] == "tool_use"
    [use] = [block for block in seen["content"] if block["type"] == "tool_use"]
    assert use["name"] == "get_weather" and use["input"]["city"] in ("Paris", "Oslo", "Lima")
    assert seen["usage"]["input_tokens"] > 0 and seen["usage"]["output_tokens"] >= 1


def test_messages_forced_tool_use_not_streamed(gate_url):
    seen = run_sdk_case("messages_forced_tool", gate_url, MODEL)
    assert seen["type"] == "message" and seen["stop_reason"] == "tool_use"
    uses = [block for block in seen["content"] if block["type"] == "tool_use"]
    assert len(uses) == 1, seen["content"]
    assert uses[0]["name"] == "get_weather" and uses[0]["id"]
    assert uses[0]["input"]["city"] in ("Paris", "Oslo", "Lima")


def test_count_tokens(gate_url):
    seen = run_sdk_case("count_tokens", gate_url, MODEL)
    # One token per byte: "be brief" and the question, plus the template's few.
    assert seen["input_tokens"] > len("be brief" + "how many tokens is this?")


def test_models_listed(gate_url):
    seen = run_sdk_case("models", gate_url, MODEL)
    assert seen["openai"] == [MODEL]
    assert seen["anthropic"] == [{"id": MODEL, "type": "model"}]
