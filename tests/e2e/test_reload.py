"""Config changes reach a running `gate serve` without a restart, where that is safe.

Hand edits of gate.toml are picked up by the config watcher (within about a second);
`update_config` over the RPC applies before it answers. Keys that cannot change live
(binds, ports, the data dir...) are reported as waiting for a restart, and the node
keeps running with their old values.
"""

import os
import subprocess
import time
import tomllib
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


# --- every path that recomputes the config keeps defaults -> file -> environment --------

TOKEN = {"authorization": "Bearer env-token"}
SECURE_ENV = {
    "GATE_SECURITY__REQUIRE_API_KEYS": "true",
    "GATE_SECURITY__CONTROL_TOKEN": "env-token",
    "GATE_SERVER__MAX_BODY_BYTES": "2000",
}


def call(url: str, method: str, params=None, headers=None) -> httpx.Response:
    body = {"jsonrpc": "2.0", "method": method, "id": 1, "params": params or {}}
    return httpx.post(f"{url}/rpc", json=body, headers=headers, timeout=30)


def answer(url: str, method: str, params=None):
    response = call(url, method, params, TOKEN)
    assert response.status_code == 200 and "result" in response.json(), response.text
    return response.json()["result"]


def assert_secured(url: str) -> None:
    """The environment's security settings hold, and each layer shows in the config."""
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401  # no API key
    assert call(url, "export_identity").status_code == 401  # no control token
    key = answer(url, "create_api_key", {"name": "ci"})["key"]
    big = {"model": "m", "messages": HI, "user": "x" * 3000}
    headers = {"authorization": f"Bearer {key}"}
    too_big = httpx.post(f"{url}/v1/chat/completions", json=big, headers=headers, timeout=10)
    assert too_big.status_code == 413
    server = answer(url, "get_config")["server"]
    assert server["max_body_bytes"] == 2000  # the environment, over the file's 1000
    assert server["client_burst"] == 7  # the file
    assert server["max_in_flight"] == 512  # the default


def restarted_url(gate) -> str:
    """Where `gate serve` listens after a node_restart (a new port: --bind 127.0.0.1:0)."""
    import re
    import select

    deadline = time.monotonic() + 30
    buffer = b""
    while time.monotonic() < deadline:
        if select.select([gate.proc.stdout], [], [], 0.5)[0]:
            buffer += gate.proc.stdout.read() or b""
            if match := re.search(rb"listening on (http://\S+)", buffer):
                return match.group(1).decode()
    raise AssertionError("gate serve did not come back after node_restart")


def test_environment_security_outlives_update_config_and_restart(start_gate, gate_env):
    gate_env.update(SECURE_ENV)
    gate = start_gate(NO_ENGINE + "[server]\nmax_body_bytes = 1000\nclient_burst = 7\n")
    assert_secured(gate.url)
    updated = answer(gate.url, "update_config", {"set": {"server.log_level": "debug"}})
    assert updated["config"]["security"] == {"require_api_keys": True, "control_token": "***"}
    assert_secured(gate.url)
    assert "env-token" not in config_path(gate).read_text()
    # A hand edit, picked up by the config watcher.
    text = config_path(gate).read_text()
    config_path(gate).write_text(text.replace("[server]\n", "[server]\nresponse_timeout = 9.0\n"))
    wait_for(lambda: "keys=server.response_timeout" in gate.stderr(), "the watcher", timeout=10)
    assert_secured(gate.url)
    # A restart reads the file and the environment again.
    assert answer(gate.url, "node_restart") == {"restarting": True}
    url = restarted_url(gate)
    assert_secured(url)


def test_twenty_concurrent_add_peer_are_all_kept(start_gate):
    from concurrent.futures import ThreadPoolExecutor

    from gate.identity import NodeIdentity
    from gate.protocol import NodeId

    gate = start_gate(NO_ENGINE)
    peers = sorted(str(NodeId(NodeIdentity.generate().public_key_bytes)) for _ in range(20))
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda p: result(gate, "add_peer", {"peer": p}), peers))
    assert sorted(a["trusted"] for a in answers) == peers
    assert sorted(node["node_id"] for node in result(gate, "list_peers")) == peers
    written = tomllib.loads(config_path(gate).read_text())["p2p"]["trusted_peers"]
    assert sorted(written) == peers


def test_add_peer_beside_cli_processes_editing_the_file_keeps_every_peer(start_gate, tmp_path):
    """The daemon adds peers over the RPC while `gate peers add` processes that find no
    daemon (their environment names another data dir and address) write the same file:
    every peer is in the file, and the daemon runs with all of them."""
    from concurrent.futures import ThreadPoolExecutor

    from gate.identity import NodeIdentity
    from gate.protocol import NodeId

    from .gate_process import GATE

    gate = start_gate(NO_ENGINE)
    by_rpc, by_cli = (
        [str(NodeId(NodeIdentity.generate().public_key_bytes)) for _ in range(4)] for _ in "ab"
    )
    elsewhere = {
        **gate.env,
        "GATE_SERVER__DATA_DIR": str(tmp_path / "other-data"),
        "GATE_SERVER__BIND": "127.0.0.1:9",  # the discard port: no daemon answers there
    }
    add = [*GATE, "peers", "add", "--config", str(config_path(gate))]
    clis = [
        subprocess.Popen([*add, peer], env=elsewhere, stderr=subprocess.PIPE) for peer in by_cli
    ]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: result(gate, "add_peer", {"peer": p}), by_rpc))
        for process in clis:
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
            assert b"no daemon running; wrote" in stderr
    finally:
        for process in clis:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
    every = sorted(by_rpc + by_cli)
    written = tomllib.loads(config_path(gate).read_text())["p2p"]["trusted_peers"]
    assert sorted(written) == every
    wait_for(
        lambda: sorted(node["node_id"] for node in result(gate, "list_peers")) == every,
        "the daemon to run with every peer",
        timeout=LIVE_WITHIN,
    )


def test_serve_removes_a_temp_file_a_killed_write_left_behind(gate_env, start_gate):
    folder = Path(gate_env["XDG_CONFIG_HOME"])
    folder.mkdir(parents=True, exist_ok=True)
    stale, fresh = folder / ".gate-test.toml.x1y2z3_4.tmp", folder / ".gate-test.toml.a1.tmp"
    stale.write_text("[server]\n")
    fresh.write_text("[server]\n")  # a write under way in another process: kept
    long_ago = time.time() - 3600
    os.utime(stale, (long_ago, long_ago))
    gate = start_gate(NO_ENGINE)
    assert not stale.exists() and fresh.exists()
    assert "removed a stale temp file" in gate.stderr()
