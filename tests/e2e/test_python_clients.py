"""Python client libraries and the `llm` CLI through Gate, in front of llama.cpp.

LangChain (ChatOpenAI, ChatAnthropic) and LiteLLM's SDK each run in a process of their
own (tests/clients/python_cases.py), as a user's program would; the `llm` CLI runs as a
user types it, with Gate named in its own model file. Versions are those the `[test]`
extra installs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import engine_config

pytestmark = pytest.mark.e2e

MODEL = "tiny-llama"
CASES = Path(__file__).resolve().parents[1] / "clients" / "python_cases.py"
CITIES = ("Paris", "Oslo", "Lima")


@pytest.fixture
def gate_url(start_gate, llama_engine) -> str:
    return start_gate(engine_config(llama_engine)).url


def run_case(case: str, url: str) -> Any:
    result = subprocess.run(
        [sys.executable, str(CASES), case, url, MODEL],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{case} failed: {result.stderr.strip()[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_langchain_chat_openai(gate_url):
    seen = run_case("langchain_openai", gate_url)
    # It sends max_tokens as max_completion_tokens, which llama.cpp ignores: the reply is
    # capped only because Gate also sends it as max_tokens (uncapped: 31 tokens).
    assert "max_completion_tokens" in seen["sent_keys"] and "max_tokens" not in seen["sent_keys"]
    assert seen["usage"]["output_tokens"] == 5 and seen["finish"] == "length"
    assert seen["usage"]["input_tokens"] > 0 and seen["text"]
    assert seen["stream_chunks"] >= 2 and seen["stream_text"] == seen["text"]  # same seed
    [call] = seen["tool_calls"]
    assert call["name"] == "get_weather" and call["args"]["city"] in CITIES


def test_langchain_chat_anthropic(gate_url):
    seen = run_case("langchain_anthropic", gate_url)
    # No logit_bias in Anthropic's dialect: the tiny model may stop early, at random.
    assert seen["stop_reason"] in ("max_tokens", "end_turn")
    assert 1 <= seen["usage"]["output_tokens"] <= 5
    assert seen["usage"]["input_tokens"] > len("be brief" + "hi")  # with the template's
    assert seen["stream_chunks"] >= 2
    assert seen["stream_usage"]["input_tokens"] > 0
    assert 1 <= seen["stream_usage"]["output_tokens"] <= 5
    [call] = seen["tool_calls"]  # one call, though llama.cpp names it twice
    assert call["name"] == "get_weather" and call["args"]["city"] in CITIES


def test_litellm_sdk_in_both_dialects(gate_url):
    seen = run_case("litellm_sdk", gate_url)
    for provider in ("openai", "anthropic"):
        answer = seen[provider]
        # Either may stop early at random (no logit_bias in Anthropic's dialect).
        assert answer["finish"] in ("length", "stop"), provider
        assert 1 <= answer["usage"]["completion_tokens"] <= 5, provider
        assert answer["usage"]["prompt_tokens"] > len("hi"), provider  # and the template's
        assert answer["stream_chunks"] >= 2, provider
        assert answer["stream_finish"] in ("length", "stop"), provider
        [call] = answer["tool_calls"]
        assert call["name"] == "get_weather" and call["args"]["city"] in CITIES, provider
    assert seen["embedding_dims"] == [64, 64]


def test_the_llm_cli(gate_url, tmp_path):
    """Simon Willison's `llm`, with Gate as an OpenAI-compatible model in its own file."""
    home = tmp_path / "llm"
    home.mkdir()
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: gate-tiny\n  model_name: {MODEL}\n  api_base: {gate_url}/v1\n"
    )
    llm = str(Path(sys.executable).with_name("llm"))
    env = {**os.environ, "LLM_USER_PATH": str(home)}
    for mode in ([], ["--no-stream"]):
        result = subprocess.run(
            [llm, "-m", "gate-tiny", *mode, "-o", "max_tokens", "5", "hi"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip(), (mode, result.stdout)
    logged = subprocess.run(
        [llm, "logs", "-n", "1", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    [entry] = json.loads(logged.stdout)
    assert entry["input_tokens"] > len("hi") and entry["output_tokens"] == 5
    assert entry["response_json"]["choices"][0]["finish_reason"] == "length"
