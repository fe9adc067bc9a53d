"""`gate serve` and the local CLI commands, as separate processes on loopback."""

import contextlib
import json
import os
import signal
import sqlite3
import stat

import httpx
import pytest

from .gate_process import GateServe, data_dir, run_gate

pytestmark = pytest.mark.e2e


def test_serve_answers_health_with_its_node_id_and_stops_cleanly(gate_env):
    with GateServe(gate_env) as gate:
        response = httpx.get(f"{gate.url}/health", timeout=5)
        gate.signal(signal.SIGTERM)
        assert gate.wait() == 0
        stderr = gate.stderr()
    assert response.status_code == 200
    body = response.json()
    assert body["node_id"] == gate.node_id and len(gate.node_id) == 52
    assert body["version"] == run_gate("--version", env=gate_env).stdout.decode().split()[-1]
    shown = json.loads(run_gate("identity", "show", "--json", env=gate_env).stdout)
    assert shown["node_id"] == gate.node_id and shown["created"] is False
    # Structured lines on stderr and in the log file, the same events in both.
    assert "msg=stopped" in stderr and "signal SIGTERM" in stderr
    log_text = (data_dir(gate_env) / "logs" / "gate.log").read_text()
    log_lines = [json.loads(line) for line in log_text.splitlines()]
    assert {"ts", "level", "logger", "msg"} <= set(log_lines[0])
    assert any(line["msg"] == "stopped" for line in log_lines)


def test_sigint_is_a_graceful_stop_too(gate_env):
    with GateServe(gate_env) as gate:
        gate.signal(signal.SIGINT)
        assert gate.wait() == 0


def test_first_start_creates_key_db_and_logs_with_safe_permissions(gate_env):
    with GateServe(gate_env) as gate:
        pass
    home = data_dir(gate_env)
    key = home / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
    with sqlite3.connect(home / "gate.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"usage", "api_keys"} <= tables
    assert gate.node_id


def test_same_identity_across_restarts(gate_env):
    with GateServe(gate_env) as first:
        pass
    with GateServe(gate_env) as second:
        pass
    assert first.node_id == second.node_id


def test_env_overrides_reach_the_daemon(gate_env, tmp_path):
    other_data = tmp_path / "elsewhere"
    env = {**gate_env, "GATE_SERVER__DATA_DIR": str(other_data)}
    with GateServe(env) as gate:
        assert httpx.get(f"{gate.url}/health", timeout=5).status_code == 200
    assert (other_data / "node.key").exists() and (other_data / "gate.db").exists()


def test_invalid_config_is_a_clear_error_not_a_traceback(gate_env, tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text("[server]\nbind = 'nowhere'\n")
    result = run_gate("serve", "--config", str(config), env=gate_env)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert str(config) in err and "server.bind" in err and "Traceback" not in err


def test_port_in_use_fails_with_a_message(gate_env):
    with GateServe(gate_env) as gate:
        busy = gate.url.removeprefix("http://")
        result = run_gate("serve", "--bind", busy, env=gate_env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr.decode()
    assert "http" in result.stderr.decode()


def test_corrupt_key_is_refused_and_left_untouched(gate_env):
    home = data_dir(gate_env)
    home.mkdir(parents=True)
    key = home / "node.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    os.chmod(key, 0o600)
    result = run_gate("serve", "--bind", "127.0.0.1:0", env=gate_env)
    assert result.returncode == 2
    assert "node.key" in result.stderr.decode()
    assert key.read_bytes() == b"-----BEGIN PRIVATE KEY-----\ngarbage\n"


def test_a_data_dir_that_cannot_be_written_fails_with_exit_1_not_a_traceback(gate_env, tmp_path):
    """The system refusing a write is "the operation failed" (1); a bad key is bad input
    (2, above). A file where the data directory should be refuses even root."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {**gate_env, "XDG_DATA_HOME": str(blocker)}
    for args, says in (
        (("identity", "show"), "cannot create data dir"),
        (("serve", "--bind", "127.0.0.1:0"), "cannot open the log file"),
    ):
        result = run_gate(*args, env=env)
        stderr = result.stderr.decode()
        assert result.returncode == 1, (args, stderr)
        assert says in stderr and "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 1


def test_encrypted_identity_export_import_between_nodes(gate_env, tmp_path):
    env_a = {**gate_env, "GATE_PASSPHRASE": "correct horse"}
    shown = json.loads(run_gate("identity", "show", "--json", env=env_a).stdout)
    assert b"ENCRYPTED" in (data_dir(gate_env) / "node.key").read_bytes()
    # Without the passphrase the key cannot be used, and is not replaced.
    locked = run_gate("identity", "show", env=gate_env)
    assert locked.returncode == 2 and "GATE_PASSPHRASE" in locked.stderr.decode()

    exported = run_gate("identity", "export", env=env_a)
    assert exported.returncode == 0 and b"BEGIN PRIVATE KEY" in exported.stdout
    env_b = {"XDG_CONFIG_HOME": str(tmp_path / "b-cfg"), "XDG_DATA_HOME": str(tmp_path / "b")}
    run_gate("identity", "show", env=env_b)  # node B has its own key first
    refused = run_gate("identity", "import", "-", env=env_b, input=exported.stdout)
    assert refused.returncode == 2 and "--force" in refused.stderr.decode()
    forced = run_gate("identity", "import", "--force", "-", env=env_b, input=exported.stdout)
    assert forced.returncode == 0, forced.stderr
    assert list((tmp_path / "b" / "gate").glob("node.key.bak-*"))
    again = json.loads(run_gate("identity", "show", "--json", env=env_b).stdout)
    assert again["node_id"] == shown["node_id"]


def test_config_show_masks_secrets_and_validate_reports(gate_env, tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text(
        "[security]\ncontrol_token = 'hunter2'\n"
        "[[providers.engines]]\nname = 'cloud'\nkind = 'openai'\napi_key = 'sk-secret'\n"
    )
    shown = run_gate("config", "show", "--json", "--config", str(config), env=gate_env)
    assert shown.returncode == 0
    text = shown.stdout.decode()
    assert "hunter2" not in text and "sk-secret" not in text and "***" in text
    data = json.loads(text)["config"]
    assert data["server"]["bind"] == "127.0.0.1:31145"
    assert run_gate("config", "validate", str(config), env=gate_env).returncode == 0
    config.write_text("[p2p]\nport = 70000\n")
    bad = run_gate("config", "validate", str(config), env=gate_env)
    assert bad.returncode == 2 and "p2p.port" in bad.stderr.decode()


def test_on_a_terminal_the_banner_comes_first_and_ctrl_c_says_it_drains_and_records_all(
    gate_env, make_llama_engine, tmp_path
):
    """A person at a terminal: `gate serve` shows its banner alone (the log lines go to
    the file), Ctrl-C says at once that Gate is draining and for how long, and the
    stream the drain had to cut is in the usage table with its outcome."""
    import re
    import threading
    import time

    import pexpect

    from tests.engine.tiny_model import write_tiny_gguf

    from .conftest import engine_config
    from .gate_process import GATE
    from .test_gateway import HI, MODEL

    model = write_tiny_gguf(tmp_path / "endless.gguf", can_stop=False)
    engine = make_llama_engine(model, n_ctx=65536)
    config = tmp_path / "gate.toml"
    config.write_text(engine_config(engine, extra="[server]\ndrain_timeout = 2.0\n"))
    env = {**os.environ, **gate_env, "GATE_SERVER__BIND": "127.0.0.1:0"}
    child = pexpect.spawn(
        GATE[0],
        [*GATE[1:], "serve", "--config", str(config)],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    streamed = threading.Event()
    try:
        child.expect(r"data \S+  log \S+\r\n")
        screen = (child.before + child.after).splitlines()
        assert [line.split()[0] for line in screen] == ["Gate", "API", "P2P", "data"], screen
        url = re.search(r"API listening on (\S+)", child.before).group(1)

        def stream() -> None:
            body = {"model": MODEL, "messages": HI, "max_tokens": 60000, "stream": True}
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream(
                    "POST", f"{url}/v1/chat/completions", json=body, timeout=60
                ) as response,
            ):
                for _ in response.iter_lines():
                    streamed.set()

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert streamed.wait(30)
        pressed = time.monotonic()
        child.sendintr()
        child.expect(r"shutting down: signal SIGINT; what is in flight has up to 2s to finish")
        assert time.monotonic() - pressed < 1.5  # said at once, not after the drain
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        reader.join(30)
    finally:
        child.close(force=True)
    with sqlite3.connect(data_dir(gate_env) / "gate.db") as db:
        rows = db.execute("SELECT endpoint, model, status, error FROM usage").fetchall()
    assert rows == [
        ("chat.completions", MODEL, 503, "cut short: Gate is shutting down"),
    ]
    # The log file kept what the terminal did not show.
    log = (data_dir(gate_env) / "logs" / "gate.log").read_text()
    assert "service 'http' started" in log
