"""Requests recorded from Claude Code 2.1.197 and Codex CLI 0.171.0, replayed against Gate in
front of llama.cpp, headers included, body byte for byte as the client sent it.

tests/fixtures/clients/ holds them (made with tests/clients/recorder.py, then scrubbed of
paths, ids and dates). What they carry that simpler tests do not: Claude Code's
`role: "system"` message after the user's turn, 24 tools (~70 kB of schemas),
`cache_control` on system and message blocks, `thinking: {"type": "adaptive"}`,
`context_management`, `output_config`, `metadata`, `?beta=true` and seven
`anthropic-beta` flags; Codex's Responses `input` items with `developer` messages,
`input_text` parts, function and non-function tools, `reasoning`, `include`, `store:
false`, `prompt_cache_key`, `client_metadata` and its `x-codex-*` headers.

Second turns (`claude -c`, `codex exec resume --last`) carry the first answer back.
Each answer must be well-formed in the client's dialect: every streamed event parses and
names its own type, in the documented order, with usage; or a complete JSON message.

The full-size Claude Code requests (~99,000 tokens) take llama.cpp minutes to read on two
cores: they are marked `slow` (CI runs them: `make test` runs every test). They come
last, in this order, and test_coding_agents.py starts with Claude Code's whole prompt:
llama-cpp-python reuses the prompt it evaluated last as far as a new one matches it, so
the second replay (the same prompt) takes a second and the CLI's run (the same tools)
less than the first.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from .conftest import engine_config

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clients"
# httpx decodes only what it asked for; the rest of the recorded headers go as they are.
NOT_REPLAYED = {"accept-encoding", "content-length", "host", "connection"}
SLOW_TIMEOUT = 1800  # s: a ~99,000-token prompt on the test machine's llama.cpp


@pytest.fixture
def gate(start_gate, long_context_engine):
    return start_gate(engine_config(long_context_engine))


def replay(gate, name: str, timeout: float = 300) -> httpx.Response:
    record = json.loads((FIXTURES / name).read_text())
    headers = {k: v for k, v in record["headers"].items() if k.lower() not in NOT_REPLAYED}
    body = json.dumps(record["body"]).encode()
    with httpx.Client(timeout=timeout) as client:
        response = client.request(
            record["method"], f"{gate.url}{record['path']}", headers=headers, content=body
        )
    return response


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) pairs; a data line that does not parse fails the test."""
    events: list[tuple[str, dict]] = []
    name = None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert name == data["type"], (name, data)
            events.append((name, data))
            name = None
    return events


def assert_anthropic_stream(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in names and "content_block_stop" in names
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["usage"]["input_tokens"] > 0
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert delta["usage"]["output_tokens"] >= 1


def assert_anthropic_message(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] and message["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] >= 1


def test_claude_code_request_with_two_tools_streamed(gate):
    """The same first turn with `--tools Bash,Read`: every field above, a ~13,000-token prompt."""
    assert_anthropic_stream(replay(gate, "claude_code_two_tools_streamed.json"))


def test_claude_code_second_turn_streamed(gate):
    """`claude -c`: its first answer among the turns, `cache_control` moved to the last."""
    assert_anthropic_stream(replay(gate, "claude_code_second_turn_two_tools_streamed.json"))


def assert_responses_stream(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed", names
    assert "response.output_item.added" in names and "response.output_item.done" in names
    numbers = [data["sequence_number"] for _, data in events]
    assert numbers == list(range(len(events)))
    completed = events[-1][1]["response"]
    assert completed["status"] == "completed" and completed["output"]
    assert completed["usage"]["input_tokens"] > 0 and completed["usage"]["output_tokens"] >= 1


def test_codex_first_turn_streamed(gate):
    assert_responses_stream(replay(gate, "codex_first_turn_streamed.json"))


def test_codex_second_turn_streamed(gate):
    """`codex exec resume`: input items with ids, its first answer as an assistant
    message of `output_text` with `status`, `store: false` (no previous_response_id)."""
    assert_responses_stream(replay(gate, "codex_second_turn_streamed.json"))


@pytest.mark.slow
def test_claude_code_first_turn_streamed(gate):
    assert_anthropic_stream(
        replay(gate, "claude_code_first_turn_streamed.json", timeout=SLOW_TIMEOUT)
    )


@pytest.mark.slow
def test_claude_code_first_turn_not_streamed(gate):
    """Claude Code's retry without `stream` when a stream fails."""
    assert_anthropic_message(
        replay(gate, "claude_code_first_turn_not_streamed.json", timeout=SLOW_TIMEOUT)
    )
