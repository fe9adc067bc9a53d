"""Config changes reach a running `gate serve` without a restart, where that is safe.

Hand edits of gate.toml are picked up by the config watcher (within about a second);
`update_config` over the RPC applies before it answers. Keys that cannot change live
(binds, ports, the data dir...) are reported as waiting for a restart, and the node
keeps running with their old values.
"""

import time
from pathlib import Path

import httpx
import pytest

from gate.node import CONFIG_POLL_INTERVAL

from .conftest import engine_config
from .gate_process import wait_for
from .test_gateway import HI, MODEL
from .test_rpc import result, rpc

pytestmark = pytest.mark.e2e

LIVE_WITHIN = 10.0  # seconds for a change to show in a running node
NO_ENGINE = "[providers]\nprobe_local = false\nhealth_interval = 1.0\n"


def config_path(gate) -> Path:
    return Path(gate.env["XDG_CONFIG_HOME"]) / "gate-test.toml"


def model_ids(gate) -> list[str]:
    return [m["id"] for m in httpx.get(f"{gate.url}/v1/models", timeout=10).json()["data"]]


def chat(gate, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 1, **extra}
    return httpx.post(f"{gate.url}/v1/chat/completions", json=body, timeout=30)


def test_hand_edits_apply_live_and_bad_ones_are_refused(start_gate, llama_engine):
    gate = start_gate(NO_ENGINE)
    assert model_ids(gate) == []
    assert chat(gate, MODEL).status_code == 404

    # An engine added by hand serves at once, with an alias and a smaller body limit.
    config_path(gate).write_text(
        engine_config(llama_engine)
        + "[providers.aliases]\nfast = 'tiny-llama'\n[server]\nmax_body_bytes = 2000\n"
    )
    wait_for(lambda: MODEL in model_ids(gate), "the hand-added engine's model", timeout=LIVE_WITHIN)
    assert chat(gate, "fast").status_code == 200
    assert chat(gate, MODEL, user="x" * 3000).status_code == 413
    wait_for(lambda: "config applied" in gate.stderr(), "the log line", timeout=LIVE_WITHIN)

    # A broken edit is refused; the node keeps serving as before.
    good = config_path(gate).read_text()
    config_path(gate).write_text(good + "[p2p]\nport = 'nope'\n")
    wait_for(lambda: "config change refused" in gate.stderr(), "the refusal", timeout=LIVE_WITHIN)
    assert chat(gate, "fast").status_code == 200

    # A key that cannot change live is logged as waiting for a restart; the rest applies.
    config_path(gate).write_text(
        good.replace("max_body_bytes = 2000", "max_body_bytes = 20000\ndrain_timeout = 3.0")
    )
    wait_for(
        lambda: "keys=server.drain_timeout" in gate.stderr(),
        "the restart notice",
        timeout=LIVE_WITHIN,
    )
    assert chat(gate, MODEL, user="x" * 3000).status_code == 200

    # Removing the engine takes its model away.
    config_path(gate).write_text(NO_ENGINE)
    wait_for(lambda: model_ids(gate) == [], "the engine to go", timeout=LIVE_WITHIN)
    assert chat(gate, MODEL).status_code == 404


def test_update_config_applies_before_it_answers(start_gate, llama_engine):
    gate = start_gate(engine_config(llama_engine))
    assert chat(gate, MODEL).status_code == 200
    answer = result(
        gate,
        "update_config",
        {"set": {"security.require_api_keys": True, "server.max_in_flight": 8}},
    )
    assert answer["restart_required"] == []
    assert chat(gate, MODEL).status_code == 401  # no waiting for the watcher
    # Logged once: the watcher takes the file the RPC wrote as read, not as a new change
    # to apply (and log) again. It looks every second; give it a few looks.
    assert "config applied" in gate.stderr()
    time.sleep(3 * CONFIG_POLL_INTERVAL)
    assert gate.stderr().count("config applied") == 1
    key = result(gate, "create_api_key", {"name": "ci"})["key"]
    ok = httpx.post(
        f"{gate.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "max_tokens": 1},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert ok.status_code == 200
    # Exposing the API beyond loopback without keys is refused, and nothing is written.
    before = config_path(gate).read_text()
    exposed = rpc(
        gate,
        "update_config",
        {"set": {"server.bind": "0.0.0.0:31999", "security.require_api_keys": False}},
    )
    assert exposed["error"]["code"] == -32602
    assert "require_api_keys" in exposed["error"]["message"]
    assert config_path(gate).read_text() == before
    assert chat(gate, MODEL).status_code == 401
