"""Claude Code and Codex CLI, the real binaries, complete a turn through Gate in front of
llama.cpp (tests/clients/node installs them at the versions its package-lock.json pins).

Their prompts are large and the tiny model's tokenizer is one token per byte. Claude Code
2.1.197's first request is ~99,000 tokens with its 24 tools, and asks for 32,000 output
tokens; on the 2-core test machine llama.cpp needs ~6 minutes to read such a prompt. So
these runs keep the prompt small with the CLIs' own flags, and say which:
`--tools Bash,Read` (two tools instead of 24: a ~13,000-token prompt) and
`CLAUDE_CODE_MAX_OUTPUT_TOKENS=256`. Codex sends ~41,000 bytes, which a 65,536-token
context holds as it is. The engine here has 131,072 (`long_context_engine`), so the
full-size requests, recorded, are replayed too (test_client_replays.py).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.node_clients import BIN, require_node_clients

from .conftest import engine_config
from .gate_process import GateServe, data_dir
from .head_delay import HeadDelayingProxy

pytestmark = pytest.mark.e2e

MODEL = "tiny-llama"
# What Claude Code 2.1.197 asks for when no --model is given (it shows it as
# "claude-opus-4-8[1m]" and sends "claude-opus-4-8").
CLAUDE_CODE_DEFAULT_MODEL = "claude-opus-4-8"
TURN_TIMEOUT = 300  # s; a turn takes ~15 s (Claude Code) to ~40 s (Codex) here
WHOLE_PROMPT_TIMEOUT = 1800  # s; Claude Code's whole prompt took 6 min on 2 busy cores


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: none of this machine's keys, settings or endpoints leak in."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ", "TMPDIR")}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "NO_COLOR": "1", **extra}


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = TURN_TIMEOUT
) -> subprocess.CompletedProcess:
    require_node_clients()
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        args,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def usage_rows(gate: GateServe, gate_env: dict[str, str]) -> list[tuple]:
    """What Gate recorded of the run: (endpoint, status), read after it stopped."""
    gate.signal(signal.SIGTERM)
    assert gate.wait() == 0
    with sqlite3.connect(data_dir(gate_env) / "gate.db") as db:
        return db.execute("SELECT endpoint, status FROM usage ORDER BY id").fetchall()


@pytest.fixture
def claude(tmp_path: Path) -> Iterator:
    def run(gate_url: str, *args: str, trim: bool = True) -> subprocess.CompletedProcess:
        env = client_env(
            tmp_path / "home",
            ANTHROPIC_BASE_URL=gate_url,
            ANTHROPIC_API_KEY="dummy-key-gate-ignores",
            # Documented: no telemetry, error reports, auto-updates or other traffic
            # beyond the API calls themselves.
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            DISABLE_TELEMETRY="1",
            DISABLE_ERROR_REPORTING="1",
            DISABLE_AUTOUPDATER="1",
            CLAUDE_CODE_MAX_OUTPUT_TOKENS="256",
        )
        command = [str(BIN / "claude"), "-p", "Say hi", "--output-format", "json", *args]
        if trim:
            command += ["--tools", "Bash,Read"]
        timeout = TURN_TIMEOUT if trim else WHOLE_PROMPT_TIMEOUT
        return run_cli(command, env, tmp_path / "project", timeout=timeout)

    yield run


def assert_claude_turn_completed(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["type"] == "result" and outcome["is_error"] is False, outcome
    assert outcome["result"], outcome
    return outcome


@pytest.mark.slow
def test_claude_code_completes_a_turn_with_its_whole_prompt(
    start_gate, long_context_engine, gate_env, claude
):
    """All 24 tools, nothing trimmed but the output cap: ~99,000 prompt tokens, minutes.
    First in this module: right after test_client_replays.py's, whose prompt starts the
    same, so the engine reuses most of what it read there."""
    gate = start_gate(engine_config(long_context_engine))
    outcome = assert_claude_turn_completed(claude(gate.url, "--model", MODEL, trim=False))
    assert outcome["modelUsage"][MODEL]["inputTokens"] > 90_000
    assert ("messages", 200) in usage_rows(gate, gate_env)


def test_claude_code_completes_a_turn(start_gate, long_context_engine, gate_env, claude):
    gate = start_gate(engine_config(long_context_engine))
    outcome = assert_claude_turn_completed(claude(gate.url, "--model", MODEL))
    # The real prompt, as llama.cpp counted it (Gate's message_start and message_delta).
    assert outcome["modelUsage"][MODEL]["inputTokens"] > 10_000
    assert ("messages", 200) in usage_rows(gate, gate_env)


def test_claude_code_takes_a_stream_opened_before_its_engine_answered(
    start_gate, long_context_engine, gate_env, claude
):
    """The engine's answer held 4 s (tests/e2e/head_delay.py: as Ollama holds its head
    until the first token) and stream_keepalive at 0.5 s: Gate opens Claude Code's stream
    first and pings, message_start comes after the pings, and the turn completes."""
    gate_env["GATE_SERVER__STREAM_KEEPALIVE"] = "0.5"
    with HeadDelayingProxy(long_context_engine.root_url, delay=4.0) as proxy:
        gate = start_gate(engine_config(proxy))
        assert_claude_turn_completed(claude(gate.url, "--model", MODEL))
        assert ("messages", 200) in usage_rows(gate, gate_env)


def test_claude_code_default_model_aliased_to_the_local_one(
    start_gate, long_context_engine, gate_env, claude
):
    alias = f"[providers]\naliases = {{ '{CLAUDE_CODE_DEFAULT_MODEL}' = '{MODEL}' }}\n"
    gate = start_gate(engine_config(long_context_engine).replace("[providers]\n", alias, 1))
    assert_claude_turn_completed(claude(gate.url))  # no --model: its own default
    assert ("messages", 200) in usage_rows(gate, gate_env)


def test_codex_exec_completes_a_turn(start_gate, long_context_engine, gate_env, tmp_path):
    gate = start_gate(engine_config(long_context_engine))
    provider = {
        "name": "Gate",
        "base_url": f"{gate.url}/v1",
        "wire_api": "responses",
        # One attempt: a failure shows at once instead of after Codex's backoff.
        "request_max_retries": 0,
        "stream_max_retries": 0,
    }
    overrides = ["model_provider=gate", "analytics.enabled=false"] + [
        f"model_providers.gate.{key}={json.dumps(value)}" for key, value in provider.items()
    ]
    env = client_env(tmp_path / "home", CODEX_HOME=str(tmp_path / "codex-home"))
    (tmp_path / "codex-home").mkdir()
    command = [str(BIN / "codex"), "exec", "--json", "--skip-git-repo-check", "-m", MODEL]
    # Its plugin sync looks up github.com at start (seen with strace); the test stays on
    # loopback. With this, its only connection is to Gate.
    command += ["--disable", "plugins"]
    for override in overrides:
        command += ["-c", override]
    result = run_cli([*command, "Say hi"], env, tmp_path / "project")
    rows = usage_rows(gate, gate_env)
    assert rows and all(endpoint == "responses" for endpoint, _ in rows), rows
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kinds = [event.get("type") for event in events]
    assert "turn.completed" in kinds, kinds
    messages = [
        event["item"]
        for event in events
        if event.get("type") == "item.completed"
        and event.get("item", {}).get("type") == "agent_message"
    ]
    assert messages and messages[-1].get("text"), events
    # Not checked: the status Gate records. Codex hangs up as soon as it has
    # `response.completed`, before Gate has ended the body, and Gate logs that as 499.
