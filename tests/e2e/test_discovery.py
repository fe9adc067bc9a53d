"""Where Gate looks for local engines (providers.probe_urls), and that the tests find
only the engines they start themselves.

Most of Gate's users run Ollama, LM Studio, llama.cpp or vLLM on its default port, and
must be able to run these tests. `gate_env` points probing nowhere; the test below
proves it works by putting answering engines on every default port, then looking for
engines each way Gate does (the daemon at start, the `discover_providers` RPC, `gate
setup` without a daemon).
"""

import contextlib
import json
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gate.config import LOCAL_ENGINE_URLS

from .fake_engine import MODEL, FakeEngine
from .gate_process import GateServe, run_gate

pytestmark = pytest.mark.e2e

NOWHERE = "127.0.0.1:9"  # the discard port: no daemon answers there


def rpc(url: str, method: str, params=None):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    answer = httpx.post(f"{url}/rpc", json=body, timeout=30).json()
    assert "error" not in answer, answer
    return answer["result"]


def setup_offline(env: dict[str, str]) -> dict:
    """`gate setup --yes` with no daemon running; returns the gate.toml it wrote."""
    done = run_gate(
        "setup", "--yes", "--no-start", env={**env, "GATE_SERVER__BIND": NOWHERE}, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    return tomllib.loads((Path(env["XDG_CONFIG_HOME"]) / "gate" / "gate.toml").read_text())


@pytest.fixture
def default_ports_answer():
    """An answering engine on each default local port that is free. A port that is
    taken is most likely taken by an engine of this machine: the very case at hand."""
    with contextlib.ExitStack() as stack:
        for url in LOCAL_ENGINE_URLS.values():
            with contextlib.suppress(OSError):
                stack.enter_context(FakeEngine(urlsplit(url).port or 0))
        yield


def test_tests_never_find_the_engines_of_this_machine(gate_env, default_ports_answer):
    with GateServe(gate_env) as node:  # no engines configured: it probes
        assert rpc(node.url, "list_providers") == []
        assert rpc(node.url, "discover_providers") == []
        models = httpx.get(f"{node.url}/v1/models", timeout=10).json()
    assert models["data"] == []
    written = setup_offline(gate_env)
    assert "engines" not in written.get("providers", {})


def test_probe_urls_steer_the_daemon_discovery_and_setup(gate_env):
    with FakeEngine() as engine:
        env = {**gate_env, "GATE_PROVIDERS__PROBE_URLS": json.dumps({"ollama": engine.url})}
        with GateServe(env) as node:
            (provider,) = rpc(node.url, "list_providers")
            (found,) = rpc(node.url, "discover_providers")
        written = setup_offline(env)
    assert (provider["name"], provider["base_url"], provider["healthy"]) == (
        "ollama",
        engine.url,
        True,
    )
    assert provider["models"] == [MODEL]
    assert found == {
        "kind": "ollama",
        "base_url": engine.url,
        "found": True,
        "models": [MODEL],
        "configured": True,  # the daemon uses it already
        "error": None,
    }
    assert written["providers"]["engines"] == [
        {"name": "ollama", "kind": "ollama", "base_url": engine.url}
    ]
