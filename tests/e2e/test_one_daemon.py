"""One daemon per data dir, and a CLI that acts only on the daemon of its own node.

Real `gate serve` processes: a second daemon on a data dir already held is refused
(the lock is the kernel's flock, released when the holder dies, even by SIGKILL);
`gate status` and `gate stop` find the daemon that holds the data dir after the config's
`server.bind` moved; and every command that talks to a daemon refuses one of another
node (exit 4) and changes nothing.
"""

import json
import signal
import tomllib
from pathlib import Path

import httpx
import pytest

from gate.identity import load_or_create_identity

from .gate_process import GateServe, alive, data_dir, run_gate
from .test_cli import EXIT_FAILURE, err, free_port, out

pytestmark = pytest.mark.e2e


EXIT_WRONG_NODE = 4
OTHER_NODE = "rabdagg7roz4mcxbih6ebefvnbhpykojhb2yqe6wami4df3x6zqa"


def test_a_second_daemon_on_one_data_dir_is_refused_until_the_first_dies(gate_env):
    with GateServe(gate_env) as first:
        pid = first.proc.pid
        second = run_gate("serve", "--bind", "127.0.0.1:0", env=gate_env, timeout=30)
        assert second.returncode == EXIT_FAILURE
        line = (
            f"gate: error: another Gate daemon (pid {pid}, {first.url}) already runs on the "
            f"data dir {data_dir(gate_env)}; stop it first with `gate stop`\n"
        )
        assert err(second) == line
        assert "API listening" not in out(second)
        assert httpx.get(f"{first.url}/health", timeout=5).json()["node_id"] == first.node_id

        lock = json.loads((data_dir(gate_env) / "gate.lock").read_text())
        assert lock == {"pid": pid, "url": first.url, "node_id": first.node_id}

        first.signal(signal.SIGKILL)  # no clean-up at all: the kernel drops the lock
        first.wait()
    with GateServe(gate_env) as again:  # the file is still there; the lock is not
        assert again.node_id == first.node_id


def test_status_and_stop_find_the_daemon_after_its_bind_moved(gate_env, tmp_path, detached):
    config = tmp_path / "gate.toml"
    old_bind, new_bind = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config.write_text(f"[server]\nbind = '{old_bind}'\n")
    started = run_gate("serve", "--background", "--json", "--config", str(config), env=gate_env)
    assert started.returncode == 0, err(started)
    facts = json.loads(out(started))

    # What `gate config edit` does to the file; the daemon keeps its old bind until a
    # restart, and says so.
    config.write_text(f"[server]\nbind = '{new_bind}'\n")
    status = run_gate("status", "--json", "--config", str(config), env=gate_env)
    assert status.returncode == 0, err(status)
    assert json.loads(out(status))["node_id"] == facts["node_id"]

    # The advice Gate gives: `gate stop`, then `gate serve --background`.
    refused = run_gate("serve", "--background", "--config", str(config), env=gate_env)
    assert refused.returncode == EXIT_FAILURE
    assert f"already answers at http://{old_bind} (node {facts['node_id']})" in err(refused)
    assert f"holds the data dir {data_dir(gate_env)} (pid {facts['pid']})" in err(refused)
    stopped = run_gate("stop", "--config", str(config), env=gate_env)
    assert stopped.returncode == 0, err(stopped)
    assert out(stopped) == "stopped\n"
    assert not alive(facts["pid"])  # `stop` returns once the process has ended
    restarted = run_gate("serve", "--background", "--json", "--config", str(config), env=gate_env)
    assert restarted.returncode == 0, err(restarted)
    assert json.loads(out(restarted))["url"] == f"http://{new_bind}"
    assert run_gate("stop", "--config", str(config), env=gate_env).returncode == 0


@pytest.mark.parametrize("other_has_a_key", [True, False], ids=["other-node", "no-node-yet"])
def test_the_cli_never_acts_on_another_nodes_daemon(gate_env, tmp_path, other_has_a_key):
    """A config whose data dir is another node's (or no node's yet) finds a daemon at
    its server.bind: every command says so, exits 4 and changes nothing there."""
    with GateServe(gate_env, config="") as theirs:
        their_config = Path(theirs.args[-1])
        mine = {
            **gate_env,
            "XDG_DATA_HOME": str(tmp_path / "my-data"),
            "GATE_SERVER__BIND": theirs.url.removeprefix("http://"),
        }
        my_config = tmp_path / "my.toml"
        my_config.write_text("")
        if other_has_a_key:
            load_or_create_identity(tmp_path / "my-data" / "gate", None)  # another node
        commands = [
            ("status",),
            ("stop",),
            ("logs",),
            ("logs", "-f"),
            ("providers", "list"),
            ("peers", "list"),
            ("peers", "add", OTHER_NODE),
            ("peers", "remove", OTHER_NODE),
            ("keys", "create", "laptop"),
            ("keys", "list"),
            ("keys", "revoke", "key_00000000"),
        ]
        for args in commands:
            result = run_gate(*args, "--config", str(my_config), env=mine)
            assert result.returncode == EXIT_WRONG_NODE, (args, err(result))
            assert err(result).startswith(
                f"gate: error: the daemon at {theirs.url} is node {theirs.node_id}, "
            ), (args, err(result))
            assert err(result).endswith("; nothing done\n") and err(result).count("\n") == 1
            assert out(result) == ""
        setup = run_gate("setup", "--yes", "--config", str(my_config), env=mine)
        assert setup.returncode == EXIT_WRONG_NODE, err(setup)

        # Nothing reached their node: still running, no peer, no key.
        assert httpx.get(f"{theirs.url}/health", timeout=5).json()["node_id"] == theirs.node_id
        assert "trusted_peers" not in tomllib.loads(their_config.read_text()).get("p2p", {})
        keys = run_gate("keys", "list", "--json", "--config", str(their_config), env=theirs.env)
        assert keys.returncode == 0 and json.loads(out(keys)) == []
        assert not (tmp_path / "my-data" / "gate" / "gate.db").exists()


def test_the_daemon_that_holds_the_data_dir_is_asked_not_another_on_the_port(gate_env, tmp_path):
    """Two nodes, and the config's bind names the other one's port: the commands go to
    the daemon that holds this data dir, where its lock says it listens."""
    other_env = {**gate_env, "XDG_DATA_HOME": str(tmp_path / "other-data")}
    with GateServe(gate_env) as ours, GateServe(other_env) as other:
        env = {**gate_env, "GATE_SERVER__BIND": other.url.removeprefix("http://")}
        status = run_gate("status", "--json", env=env)
        assert status.returncode == 0, err(status)
        assert json.loads(out(status))["node_id"] == ours.node_id != other.node_id


def test_serve_background_on_a_held_data_dir_names_the_holder(gate_env, detached):
    with GateServe(gate_env) as first:
        env = {**gate_env, "GATE_SERVER__BIND": f"127.0.0.1:{free_port()}"}  # a free port
        refused = run_gate("serve", "--background", env=env)
        assert refused.returncode == EXIT_FAILURE
        assert f"already answers at {first.url} (node {first.node_id})" in err(refused)
        assert f"holds the data dir {data_dir(gate_env)} (pid {first.proc.pid})" in err(refused)
