"""What the README promises of the command line, held to the letter: real `gate`
processes, a real daemon, a fresh home each.

Peers that no node can be (this node, small-order ids) are refused; an acknowledged
peer is listed by the next command; a wrong Gate key gets 401 even on loopback; `config
validate` checks what `gate serve` checks and says it as the README shows; and the small
things: `gate --help`, `logs -f` with no daemon, the one P2P address `serve` prints.
"""

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest

from .gate_process import GATE, GateServe, announced, data_dir, run_gate

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OTHER_NODE = "rabdagg7roz4mcxbih6ebefvnbhpykojhb2yqe6wami4df3x6zqa"
EXIT_BAD_INPUT = 2


def out(result) -> str:
    return result.stdout.decode()


def err(result) -> str:
    return result.stderr.decode()


def readme() -> str:
    return (ROOT / "README.md").read_text()


@pytest.fixture
def node(gate_env):
    """A daemon with a gate.toml of its own, and the env that makes the CLI reach it."""
    with GateServe(gate_env, config="") as gate:
        gate.cli_env = {**gate_env, "GATE_SERVER__BIND": gate.url.removeprefix("http://")}
        yield gate


def cli(gate, *args):
    return run_gate(*args, "--config", gate.args[-1], env=gate.cli_env)


# --- peers ----------------------------------------------------------------------------


def test_a_node_does_not_trust_itself_nor_an_id_no_node_can_have(node, tmp_path, gate_env):
    own = cli(node, "peers", "add", node.node_id)
    assert own.returncode == EXIT_BAD_INPUT
    assert err(own) == (
        f"gate: error: {node.node_id} is this node's own id: a node does not trust itself\n"
    )
    zero = cli(node, "peers", "add", "a" * 52 + "@127.0.0.1:9")
    assert zero.returncode == EXIT_BAD_INPUT
    assert err(zero) == (
        f"gate: error: {'a' * 52} cannot be a node's id: a point of small order, which no "
        "node's key can be\n"
    )
    assert "trusted_peers" not in tomllib.loads(Path(node.args[-1]).read_text()).get("p2p", {})
    assert json.loads(out(cli(node, "peers", "list", "--json"))) == []
    assert "Connecting to ourself" not in node.stderr()

    # With no daemon running, `gate peers add` writes gate.toml itself: the same checks.
    node.close()
    offline = run_gate("peers", "add", node.node_id, "--config", node.args[-1], env=gate_env)
    assert offline.returncode == EXIT_BAD_INPUT
    assert "is this node's own id" in err(offline)


def test_a_peer_acknowledged_is_listed_by_the_next_command(node):
    added = cli(node, "peers", "add", f"{OTHER_NODE}@127.0.0.1:9")
    assert added.returncode == 0, err(added)
    assert out(added) == f"trusted {OTHER_NODE}@127.0.0.1:9  (the daemon connects now)\n"
    listed = json.loads(out(cli(node, "peers", "list", "--json")))  # at once: no waiting
    assert [row["node_id"] for row in listed] == [OTHER_NODE]
    assert cli(node, "peers", "remove", OTHER_NODE).returncode == 0
    assert json.loads(out(cli(node, "peers", "list", "--json"))) == []


# --- API keys on loopback -----------------------------------------------------------------


def test_a_wrong_gate_key_is_refused_on_loopback_too(node):
    created = cli(node, "keys", "create", "laptop")
    assert created.returncode == 0, err(created)
    key = out(created).strip()
    assert "gate: security.require_api_keys is off: requests without a key are still served" in (
        err(created)
    )

    def models(headers):
        return httpx.get(f"{node.url}/v1/models", headers=headers, timeout=10)

    assert models({}).status_code == 200  # no key, from this machine: served
    assert models({"authorization": "Bearer unused"}).status_code == 200  # an SDK's filler
    assert models({"authorization": f"Bearer {key}"}).status_code == 200
    wrong = models({"authorization": "Bearer gk_" + "x" * 43})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"]  # OpenAI's shape
    anthropic = httpx.post(
        f"{node.url}/v1/messages",
        headers={"x-api-key": key[:-1] + "y", "anthropic-version": "2023-06-01"},
        json={"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert anthropic.status_code == 401
    assert anthropic.json()["type"] == "error"  # Anthropic's shape
    assert anthropic.json()["error"]["type"] == "authentication_error"

    key_id = re.search(r"id (key_\w+)", err(created)).group(1)
    assert cli(node, "keys", "revoke", key_id).returncode == 0
    assert models({"authorization": f"Bearer {key}"}).status_code == 401  # revoked: refused


# --- config validate ----------------------------------------------------------------------


def test_config_validate_refuses_what_serve_refuses(gate_env, tmp_path):
    exposed = tmp_path / "exposed.toml"
    exposed.write_text("[server]\nbind = '0.0.0.0:31145'\n")
    validated = run_gate("config", "validate", str(exposed), env=gate_env)
    assert validated.returncode == EXIT_BAD_INPUT
    served = run_gate("serve", "--config", str(exposed), env=gate_env)
    assert served.returncode == EXIT_BAD_INPUT
    line = (
        f"gate: error: {exposed}: server.bind: 0.0.0.0:31145 is reachable from other machines; "
        "set security.require_api_keys = true (and create a key) or bind 127.0.0.1\n"
    )
    assert err(validated) == line == err(served)


def test_config_validate_says_what_the_readme_shows(gate_env, tmp_path):
    block = re.search(r"\$ gate config validate bad.toml\n(.*)\n", readme()).group(1)
    (tmp_path / "bad.toml").write_text("[p2p]\nport = 70000\n")
    result = subprocess.run(
        [*GATE, "config", "validate", "bad.toml"],
        env={**os.environ, **gate_env, "PYTHONPATH": str(ROOT)},  # this tree's gate
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == EXIT_BAD_INPUT
    assert err(result) == block + "\n"


# --- small things -------------------------------------------------------------------------


def test_help_does_not_call_daemon_an_alias_of_itself(gate_env):
    text = out(run_gate("--help", env=gate_env))
    daemon = next(line for line in text.splitlines() if line.strip().startswith("daemon "))
    serve = next(line for line in text.splitlines() if line.strip().startswith("serve "))
    assert "gate serve" in daemon and "gate daemon" not in daemon
    assert "gate daemon" in serve


def test_logs_follow_with_no_daemon_reads_the_file(gate_env):
    with GateServe(gate_env):
        pass  # it wrote its log and stopped
    env = {**gate_env, "GATE_SERVER__BIND": "127.0.0.1:9"}
    followed = run_gate("logs", "-f", env=env)
    path = data_dir(gate_env) / "logs" / "gate.log"
    assert followed.returncode == 0, err(followed)
    assert err(followed) == f"gate: no daemon running; reading {path} (nothing to follow)\n"
    assert out(followed).endswith("gate.cli: stopped\n")
    assert out(followed) == out(run_gate("logs", env=env))


def test_serve_prints_one_p2p_address_and_status_lists_them_all(node):
    (line,) = [line for line in announced(node) if line.startswith("P2P address ")]
    address = line.removeprefix("P2P address ")
    assert re.fullmatch(rf"{node.node_id}@127\.0\.0\.1:\d+", address), line  # as the README
    status = out(cli(node, "status"))
    listed = re.search(r"^p2p\s+(\S+)$", status, re.M).group(1)
    assert listed.startswith(address)
    assert readme().count("`gate serve` prints the node's P2P address (`node_id@ip:port`)") == 1
