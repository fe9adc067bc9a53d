"""The `gate` command line against real daemons, as a user or a script runs it.

Every command that needs the daemon goes through its RPC; the --json output is parsed
and checked, and so are the exit codes (0 ok, 1 failed, 2 bad input, 3 no daemon,
130 interrupted). `serve --background` starts a real detached daemon (the `detached`
fixture kills any left behind), `config edit` runs a scripted $EDITOR, and `gate setup`
and the spinner are driven through a real pseudo-terminal with pexpect.
"""

import http.server
import json
import os
import queue
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import httpx
import pexpect
import pytest

from gate.identity import NodeIdentity, load_or_create_identity
from gate.protocol import NodeId

from .conftest import engine_config
from .gate_process import GATE, GateServe, alive, data_dir, detached_daemons, run_gate, wait_for
from .test_gateway import HI, MODEL

pytestmark = pytest.mark.e2e

OTHER_NODE = "rabdagg7roz4mcxbih6ebefvnbhpykojhb2yqe6wami4df3x6zqa"
NOWHERE = "127.0.0.1:9"  # the discard port: no daemon answers there
EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_NO_DAEMON, EXIT_INTERRUPTED = 1, 2, 3, 130
NO_DAEMON = (
    f"gate: error: no Gate daemon answers at http://{NOWHERE}; "
    "start it with `gate serve --background`\n"
)


def cli(gate, *args, env=None, input=None):
    """`gate ARGS --config <gate's file>`, pointed at that running daemon."""
    bind = gate.url.removeprefix("http://")
    return run_gate(
        *args,
        "--config",
        gate.args[-1],
        env={**gate.env, "GATE_SERVER__BIND": bind, **(env or {})},
        input=input,
    )


def out(result) -> str:
    return result.stdout.decode()


def err(result) -> str:
    return result.stderr.decode()


def rpc(url: str, method: str, params=None):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    answer = httpx.post(f"{url}/rpc", json=body, timeout=30).json()
    assert "error" not in answer, answer
    return answer["result"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gate(start_gate, llama_engine):
    return start_gate(engine_config(llama_engine))


# --- the daemon: status, providers, logs, stop ----------------------------------------


def test_status_providers_logs_and_stop_through_the_daemon(gate):
    status = cli(gate, "status", "--json")
    assert status.returncode == 0, err(status)
    assert json.loads(out(status))["providers"] == {"llama": True}
    human = out(cli(gate, "status"))
    assert "provider  llama" in human and "healthy" in human and gate.node_id in human
    (provider,) = json.loads(out(cli(gate, "providers", "list", "--json")))
    assert provider["name"] == "llama" and provider["models"] == [MODEL]
    assert MODEL in out(cli(gate, "providers", "list"))
    tested = cli(gate, "providers", "test", "llama", "--json")
    assert tested.returncode == 0 and json.loads(out(tested))["healthy"] is True
    assert out(cli(gate, "providers", "test", "llama")) == "llama: healthy, 1 model(s)\n"
    missing = cli(gate, "providers", "test", "nope")
    assert missing.returncode == EXIT_BAD_INPUT
    assert err(missing) == "gate: error: no provider 'nope'\n"
    logs = cli(gate, "logs", "--level", "info", "-n", "500")
    assert logs.returncode == 0 and "database open" in out(logs) and err(logs) == ""
    records = [json.loads(line) for line in out(cli(gate, "logs", "--json")).splitlines()]
    assert {"ts", "level", "logger", "msg"} <= records[-1].keys()
    stopped = cli(gate, "stop")
    assert stopped.returncode == 0 and out(stopped) == "stopped\n"
    assert err(stopped) == ""  # no spinner or progress bar when stderr is not a terminal
    assert gate.wait(timeout=20) == 0
    # With the daemon gone its log file still tells what happened, and says so.
    after = cli(gate, "logs", "-n", "500")
    assert after.returncode == 0 and "no daemon running; reading" in err(after)
    assert "database open" in out(after)


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("stop",),
        ("providers", "list", "--json"),
        ("providers", "test", "llama"),
        ("peers", "list"),
        ("peers", "info", OTHER_NODE, "--json"),
    ],
)
def test_commands_that_need_the_daemon_say_so_when_none_runs(gate_env, args):
    result = run_gate(*args, env={**gate_env, "GATE_SERVER__BIND": NOWHERE})
    assert result.returncode == EXIT_NO_DAEMON
    assert err(result) == NO_DAEMON  # one line, no traceback
    assert out(result) == ""


def follow_logs(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """`gate logs -f ARGS`, once it has printed its first line (so it is following)."""
    follower = subprocess.Popen(
        [*GATE, "logs", "-f", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with selectors.DefaultSelector() as selector:
        selector.register(follower.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=20):
            follower.kill()
            follower.communicate()
            raise AssertionError("gate logs -f printed nothing")
    return follower


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_logs_follow_ends_in_one_line_when_the_daemon_goes(gate_env, how):
    with GateServe(gate_env) as node:
        env = {**gate_env, "GATE_SERVER__BIND": node.url.removeprefix("http://")}
        follower = follow_logs(env)
        try:
            if how == "killed":
                node.signal(signal.SIGKILL)
            else:
                assert run_gate("stop", env=env).returncode == 0
            stdout, stderr = follower.communicate(timeout=20)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.communicate()
    if how == "killed":  # the stream broke off: the daemon the command needs is gone
        assert follower.returncode == EXIT_NO_DAEMON
        assert stderr.decode().startswith(f"gate: error: the daemon at {node.url} went away: ")
    else:  # it ended the stream itself
        assert follower.returncode == 0, stderr.decode()
        assert stderr.decode() == "gate: the daemon stopped\n"
        assert "shutting down: requested over RPC" in stdout.decode()
    assert stderr.decode().count("\n") == 1  # one line, no traceback


class FakeDaemon(http.server.ThreadingHTTPServer):
    """Just enough of a daemon for `gate logs -f` (GET /rpc/events, RPC get_logs), with
    a line logged while get_logs runs: only a client subscribed before sees it live,
    as with a real daemon, whose history is read from its log file."""

    daemon_threads = True

    def __init__(self, *, cut: bool) -> None:
        """`cut`: the event stream breaks off (a length promised, not sent) at its end."""
        super().__init__(("127.0.0.1", 0), FakeDaemonHandler)
        self.subscribers: list[queue.Queue[dict[str, str]]] = []
        self.lock = threading.Lock()
        self.node_id = ""  # set by the fixture
        self.cut = cut

    def publish(self, record: dict[str, str]) -> None:
        with self.lock:
            for subscriber in self.subscribers:
                subscriber.put(record)


def log_record(msg: str) -> dict[str, str]:
    return {"ts": "2026-01-02T03:04:05.678+00:00", "level": "info", "logger": "t", "msg": msg}


class FakeDaemonHandler(http.server.BaseHTTPRequestHandler):
    server: FakeDaemon

    def log_message(self, format, *args):  # quiet
        pass

    def do_GET(self):  # the event stream: hello, then live lines until "after"
        assert self.path == "/rpc/events"
        lines: queue.Queue[dict[str, str]] = queue.Queue()
        with self.server.lock:
            self.server.subscribers.append(lines)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        if self.server.cut:
            self.send_header("content-length", "1000000")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        self.wfile.write(b"event: hello\ndata: {}\n\n")
        self.wfile.flush()
        record: dict[str, str] = {}
        while record.get("msg") != "after":
            try:
                record = lines.get(timeout=3)
            except queue.Empty:
                return
            self.wfile.write(f"event: log\ndata: {json.dumps(record)}\n\n".encode())
            self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body["method"] == "node_status":  # the CLI checks which node it talks to
            self.answer(body, {"node_id": self.server.node_id})
            return
        assert body["method"] == "get_logs"
        self.server.publish(log_record("during"))  # logged before the history is read
        self.answer(body, [log_record("before"), log_record("during")])
        self.server.publish(log_record("after"))  # logged after it was read

    def answer(self, body, result) -> None:
        answer = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def fake_daemon(request, gate_env):
    server = FakeDaemon(cut=getattr(request, "param", False))
    # It plays this data dir's node: the CLI acts only on the daemon of its own key.
    key = load_or_create_identity(data_dir(gate_env), None)[0].public_key_bytes
    server.node_id = str(NodeId(key))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.mark.parametrize("fake_daemon", [False, True], ids=["ends", "breaks"], indirect=True)
def test_logs_follow_subscribes_before_it_reads_the_history(gate_env, fake_daemon):
    host, port = fake_daemon.server_address[:2]
    env = {**gate_env, "GATE_SERVER__BIND": f"{host}:{port}"}
    followed = run_gate("logs", "-f", "--json", env=env)
    if fake_daemon.cut:  # one line, no traceback; the daemon the command needs is gone
        assert err(followed).startswith(f"gate: error: the daemon at http://{host}:{port} went")
        assert err(followed).count("\n") == 1
        assert followed.returncode == EXIT_NO_DAEMON
    # "after" was logged live after the history was read: shown. "during" is in both
    # the history and the stream: shown once.
    assert [json.loads(line)["msg"] for line in out(followed).splitlines()] == [
        "before",
        "during",
        "after",
    ]
    if not fake_daemon.cut:
        assert err(followed) == "gate: the daemon stopped\n"
        assert followed.returncode == 0


# --- peers ---------------------------------------------------------------------------


def test_peers_through_the_running_daemon(gate):
    added = cli(gate, "peers", "add", f"{OTHER_NODE}@127.0.0.1:9", "--json")
    assert added.returncode == 0, err(added)
    assert json.loads(out(added)) == {"trusted": f"{OTHER_NODE}@127.0.0.1:9", "live": True}
    assert err(added) == ""  # no "no daemon" remark
    assert OTHER_NODE in Path(gate.args[-1]).read_text()  # the daemon wrote its gate.toml

    def listed():
        return json.loads(out(cli(gate, "peers", "list", "--json")))

    (row,) = wait_for(listed, "the daemon to take the new peer")
    assert row["node_id"] == OTHER_NODE and row["addresses"] == ["127.0.0.1:9"]
    assert row["status"]["type"] in ("connecting", "disconnected", "failed")
    assert row["models"] == []
    assert out(cli(gate, "peers", "list")).startswith(OTHER_NODE)

    # Once its dial failed, the plain list says why, as the JSON does (read in one go:
    # the next attempt turns it back to connecting).
    def failed_line():
        plain = out(cli(gate, "peers", "list"))
        return plain if plain.startswith(f"{OTHER_NODE}  failed") else None

    plain = wait_for(failed_line, "the dial to fail", 30)
    assert re.fullmatch(rf"{OTHER_NODE}  failed +-  \(.+\)\n", plain), plain
    info = cli(gate, "peers", "info", OTHER_NODE, "--json")
    assert info.returncode == 0 and json.loads(out(info))["node_id"] == OTHER_NODE
    human = out(cli(gate, "peers", "info", OTHER_NODE))
    assert f"node id    {OTHER_NODE}" in human and "addresses  127.0.0.1:9" in human

    stranger = cli(gate, "peers", "info", gate.node_id)  # a node id, but not trusted
    assert stranger.returncode == EXIT_BAD_INPUT and "is not a trusted peer" in err(stranger)
    garbage = cli(gate, "peers", "add", "not-a-node")
    assert garbage.returncode == EXIT_BAD_INPUT and "not a node id" in err(garbage)

    removed = cli(gate, "peers", "remove", OTHER_NODE)
    assert removed.returncode == 0 and out(removed) == f"removed {OTHER_NODE}\n"
    wait_for(lambda: listed() == [], "the daemon to drop the peer")
    again = cli(gate, "peers", "remove", OTHER_NODE)
    assert again.returncode == EXIT_BAD_INPUT and "is not a trusted peer" in err(again)


def test_peers_add_and_remove_edit_gate_toml_when_no_daemon_runs(gate_env, tmp_path):
    config = tmp_path / "gate.toml"
    offline = {**gate_env, "GATE_SERVER__BIND": NOWHERE}
    added = run_gate(
        "peers", "add", f"{OTHER_NODE}@127.0.0.1:9", "--config", str(config), env=offline
    )
    assert added.returncode == 0, err(added)
    assert out(added) == f"trusted {OTHER_NODE}@127.0.0.1:9\n"
    assert err(added) == f"gate: no daemon running; wrote {config} (it applies at the next start)\n"
    assert tomllib.loads(config.read_text())["p2p"]["trusted_peers"] == [
        f"{OTHER_NODE}@127.0.0.1:9"
    ]

    with GateServe(gate_env, "--config", str(config)) as node:  # the next start uses it
        online = {**gate_env, "GATE_SERVER__BIND": node.url.removeprefix("http://")}
        listed = run_gate("peers", "list", "--json", "--config", str(config), env=online)
        assert [row["node_id"] for row in json.loads(out(listed))] == [OTHER_NODE]

    removed = run_gate("peers", "remove", OTHER_NODE, "--config", str(config), env=offline)
    assert removed.returncode == 0 and "no daemon running; wrote" in err(removed)
    assert tomllib.loads(config.read_text())["p2p"]["trusted_peers"] == []
    again = run_gate("peers", "remove", OTHER_NODE, "--config", str(config), env=offline)
    assert again.returncode == EXIT_BAD_INPUT and "is not a trusted peer" in err(again)


def test_logs_in_plain_form_show_every_field(gate_env):
    """`gate logs` without --json shows what --json shows: the keys of a config change,
    the reason of a refusal, the peer (read here from the file of a stopped daemon)."""
    logs = data_dir(gate_env) / "logs"
    logs.mkdir(parents=True)
    record = {
        "ts": "2026-12-06T10:00:00.000+00:00",
        "level": "warning",
        "logger": "gate.node",
        "msg": "config changed; restart gate serve to apply it",
        "keys": "p2p.port,server.bind",
    }
    (logs / "gate.log").write_text(json.dumps(record) + "\n")
    shown = run_gate("logs", env={**gate_env, "GATE_SERVER__BIND": NOWHERE})
    assert shown.returncode == 0, err(shown)
    assert out(shown) == (
        "2026-12-06T10:00:00.000+00:00 warning gate.node: config changed; restart gate serve"
        " to apply it  keys=p2p.port,server.bind\n"
    )


def test_peers_add_from_many_processes_at_once_keeps_every_peer(gate_env, tmp_path):
    """`gate peers add` run six times at once with no daemon: each process edits the file
    under its lock, so none writes over another's peer."""
    config = tmp_path / "gate.toml"
    config.write_text("# peers added at once\n")
    peers = sorted(str(NodeId(NodeIdentity.generate().public_key_bytes)) for _ in range(6))
    env = {**os.environ, **gate_env, "GATE_SERVER__BIND": NOWHERE}
    processes = [
        subprocess.Popen(
            [*GATE, "peers", "add", peer, "--config", str(config)], env=env, stderr=subprocess.PIPE
        )
        for peer in peers
    ]
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
    assert sorted(tomllib.loads(config.read_text())["p2p"]["trusted_peers"]) == peers
    assert config.read_text().startswith("# peers added at once\n")


def test_peers_add_keeps_the_comments_and_engine_blocks_of_gate_toml(gate_env, tmp_path):
    written = (
        "# my laptop\n[providers]\nhealth_interval = 30.0  # seconds\n\n"
        '[[providers.engines]]\nname = "claude"\nkind = "anthropic"\n'
        'api_key_env = "ANTHROPIC_API_KEY" # the key stays out of the file\n'
    )
    config = tmp_path / "gate.toml"
    config.write_text(written)
    offline = {**gate_env, "GATE_SERVER__BIND": NOWHERE}
    added = run_gate("peers", "add", OTHER_NODE, "--config", str(config), env=offline)
    assert added.returncode == 0, err(added)
    # The file as it was, and the new section after it.
    assert config.read_text() == f'{written}\n[p2p]\ntrusted_peers = ["{OTHER_NODE}"]\n'


def test_gate_config_naming_a_file_not_written_yet_works_like_config(gate_env, tmp_path):
    config = tmp_path / "later" / "gate.toml"
    env = {**gate_env, "GATE_CONFIG": str(config), "GATE_SERVER__BIND": NOWHERE}
    added = run_gate("peers", "add", OTHER_NODE, env=env)
    assert added.returncode == 0, err(added)
    assert err(added) == f"gate: no daemon running; wrote {config} (it applies at the next start)\n"
    assert tomllib.loads(config.read_text())["p2p"]["trusted_peers"] == [OTHER_NODE]

    keys_env = {**env, "GATE_CONFIG": str(tmp_path / "unwritten.toml")}
    listed = run_gate("keys", "list", "--json", env=keys_env)
    assert listed.returncode == 0, err(listed)
    assert json.loads(out(listed)) == []
    assert err(listed) == f"gate: no daemon running; read {data_dir(gate_env) / 'gate.db'}\n"


# --- API keys --------------------------------------------------------------------------


def test_api_keys_through_the_daemon_and_without_one(start_gate, llama_engine, gate_env):
    offline = {**gate_env, "GATE_SERVER__BIND": NOWHERE}
    early = run_gate("keys", "create", "early", "--json", env=offline)
    assert early.returncode == 0, err(early)
    early_key = json.loads(out(early))
    assert early_key["live"] is False and early_key["key"].startswith("gk_")
    database = data_dir(gate_env) / "gate.db"
    assert err(early) == f"gate: no daemon running; wrote {database}\n"

    gate = start_gate(engine_config(llama_engine, extra="[security]\nrequire_api_keys = true\n"))
    late = cli(gate, "keys", "create", "late", "--json")
    assert late.returncode == 0 and err(late) == ""
    late_key = json.loads(out(late))
    assert late_key["live"] is True and late_key["name"] == "late"
    listed = cli(gate, "keys", "list", "--json")
    assert [k["name"] for k in json.loads(out(listed))] == ["early", "late"]
    assert early_key["key"] not in out(listed) and "hash" not in out(listed)

    def models(key: str) -> int:
        headers = {"authorization": f"Bearer {key}"}
        return httpx.get(f"{gate.url}/v1/models", headers=headers, timeout=10).status_code

    assert models(early_key["key"]) == 200 and models(late_key["key"]) == 200
    assert models("gk_wrong") == 401
    revoked = cli(gate, "keys", "revoke", early_key["id"])
    assert revoked.returncode == 0 and out(revoked) == f"revoked {early_key['id']}\n"
    assert models(early_key["key"]) == 401  # at once: the daemon itself revoked it
    assert models(late_key["key"]) == 200
    again = cli(gate, "keys", "revoke", early_key["id"])
    assert again.returncode == EXIT_BAD_INPUT and "no active key" in err(again)
    assert cli(gate, "keys", "create", "", "--json").returncode == EXIT_BAD_INPUT

    gate.close()
    after = run_gate("keys", "list", "--json", env=offline)
    assert err(after) == f"gate: no daemon running; read {database}\n"
    states = {k["name"]: k["revoked_at"] is not None for k in json.loads(out(after))}
    assert states == {"early": True, "late": False}
    human = out(run_gate("keys", "list", env=offline))
    assert f"{early_key['id']}  revoked   early" in human


# --- serve --background ------------------------------------------------------------------


def test_serve_background_starts_a_detached_daemon_and_stop_stops_it(gate_env, detached):
    bind = f"127.0.0.1:{free_port()}"
    env = {**gate_env, "GATE_SERVER__BIND": bind}
    misused = run_gate("serve", "--json", env=env)
    assert misused.returncode == EXIT_BAD_INPUT and "--json goes with --background" in err(misused)
    started = run_gate("serve", "--background", "--json", env=env)
    assert started.returncode == 0, err(started)
    facts = json.loads(out(started))
    pid = facts["pid"]
    assert facts["url"] == f"http://{bind}"
    assert httpx.get(f"{facts['url']}/health", timeout=10).json()["node_id"] == facts["node_id"]
    assert os.getsid(pid) == pid  # a session of its own: no terminal reaches it
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert Path(facts["output"]).parent == data_dir(gate_env) / "logs"
    assert f"API listening on http://{bind}" in Path(facts["output"]).read_text()
    assert Path(facts["log"]).exists()

    twice = run_gate("daemon", "--background", env=env)  # the alias; the port is taken
    assert twice.returncode == EXIT_FAILURE
    assert f"a Gate daemon already answers at http://{bind} (node {facts['node_id']})" in err(twice)
    status = run_gate("status", "--json", env=env)
    assert json.loads(out(status))["node_id"] == facts["node_id"]

    stopped = run_gate("stop", env=env)
    assert stopped.returncode == 0 and out(stopped) == "stopped\n"
    wait_for(lambda: not alive(pid), "the daemon process to exit")
    assert run_gate("status", env=env).returncode == EXIT_NO_DAEMON


def test_serve_background_human_output(gate_env, detached):
    bind = f"127.0.0.1:{free_port()}"
    env = {**gate_env, "GATE_SERVER__BIND": bind}
    started = run_gate("serve", "--background", env=env)
    assert started.returncode == 0, err(started)
    text = out(started)
    pid = int(re.search(r"started in the background \(pid (\d+)\)", text).group(1))
    assert f"API     http://{bind}" in text and "stop it with `gate stop`" in text
    node_id = re.search(r"node    (\S+)", text).group(1)
    assert httpx.get(f"http://{bind}/health", timeout=10).json()["node_id"] == node_id
    assert run_gate("stop", env=env).returncode == 0
    wait_for(lambda: not alive(pid), "the daemon process to exit")


def test_serve_background_shows_why_a_daemon_did_not_start(gate_env, detached):
    env = {**gate_env, "GATE_SERVER__BIND": "127.0.0.1:0"}
    key = data_dir(gate_env) / "node.key"
    key.parent.mkdir(parents=True)
    key.write_text("not a key")
    key.chmod(0o600)
    broken = run_gate("serve", "--background", env=env)
    assert broken.returncode == EXIT_FAILURE
    lines = err(broken).splitlines()
    assert lines[0].startswith("gate: error: the daemon exited with code 2 before it was ready")
    assert any("node.key" in line for line in lines[1:])  # its own words, from its output
    assert "Traceback" not in err(broken)

    key.unlink()
    slow = run_gate("serve", "--background", "--timeout", "0.05", env=env)
    assert slow.returncode == EXIT_FAILURE
    assert "the daemon was not ready after 0.05s; stopped it" in err(slow)
    assert detached_daemons(gate_env) == []  # not left half-started


@pytest.mark.parametrize(
    ("bind", "problem"),
    [
        ("bad", "expected HOST:PORT or [IPV6]:PORT, got 'bad'"),
        ("127.0.0.1:70000", "port must be 0..65535; got 70000"),
        ("::1:80", "an IPv6 host needs brackets"),
    ],
)
@pytest.mark.parametrize("args", [(), ("--background",)])
def test_serve_bind_is_checked_like_the_file(gate_env, detached, bind, problem, args):
    refused = run_gate("serve", "--bind", bind, *args, env=gate_env)
    assert refused.returncode == EXIT_BAD_INPUT
    assert err(refused).startswith(f"gate: error: server.bind (--bind): {problem}")
    assert err(refused).count("\n") == 1  # one line, no traceback
    assert detached_daemons(gate_env) == []


def test_serve_background_stops_a_daemon_whose_status_fails(gate_env, detached, monkeypatch):
    from click.testing import CliRunner

    from gate.cli import main
    from gate.rpc_client import RpcCallError, RpcClient

    def refuse(self, method, params=None):
        raise RpcCallError(-32603, "internal error (made up by the test)")

    # The daemon starts for real; only this process's view of its status fails.
    monkeypatch.setattr(RpcClient, "call", refuse)
    env = {**gate_env, "GATE_SERVER__BIND": "127.0.0.1:0"}
    result = CliRunner().invoke(main, ["serve", "--background"], env=env)
    assert result.exit_code == EXIT_FAILURE
    assert detached_daemons(gate_env) == []  # not left half-started
    assert "said it listens on http://127.0.0.1:" in result.stderr
    assert "internal error (made up by the test); stopped it" in result.stderr


def test_serve_background_hints_reach_the_daemon_it_started(gate_env, tmp_path, detached):
    config = tmp_path / "my gate.toml"  # a space: the hint must quote it
    config.write_text("[server]\nlog_level = 'info'\n")
    bind = f"127.0.0.1:{free_port()}"
    args = ["serve", "--background", "--config", str(config), "--bind", bind]
    started = run_gate(*args, env=gate_env)
    assert started.returncode == 0, err(started)
    hint = f"GATE_SERVER__BIND={bind} gate stop --config '{config}'"
    assert f"stop it with `{hint}`" in out(started)
    pid = int(re.search(r"started in the background \(pid (\d+)\)", out(started)).group(1))

    twice = run_gate(*args, env=gate_env)
    assert twice.returncode == EXIT_FAILURE
    assert f"stop it first with `{hint}`" in err(twice)

    # Run as hinted, it stops that daemon (the configured bind alone would not find it).
    stopped = run_gate("stop", "--config", str(config), env={**gate_env, "GATE_SERVER__BIND": bind})
    assert stopped.returncode == 0, err(stopped)
    wait_for(lambda: not alive(pid), "the daemon process to exit")


# --- config edit -------------------------------------------------------------------------

EDITOR_SCRIPT = """\
import pathlib, sys
steps, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
n = len(list(steps.glob("seen-*")))
(steps / f"seen-{n}").write_text(target.read_text())
target.write_text((steps / f"step-{n}").read_text())
"""


@pytest.fixture
def editor(tmp_path):
    """editor(text, ...) -> env whose $EDITOR writes the n-th text on its n-th run and
    keeps what it was shown in steps/seen-<n>."""
    steps = tmp_path / "editor-steps"
    steps.mkdir()
    script = tmp_path / "editor.py"
    script.write_text(EDITOR_SCRIPT)

    def make(*texts: str) -> dict[str, str]:
        for n, text in enumerate(texts):
            (steps / f"step-{n}").write_text(text)
        return {"EDITOR": f"{sys.executable} {script} {steps}", "VISUAL": ""}

    make.seen = lambda n: (steps / f"seen-{n}").read_text()  # type: ignore[attr-defined]
    return make


def test_config_edit_applies_a_valid_edit_to_the_running_daemon(gate, editor):
    path = Path(gate.args[-1])
    original = path.read_text()
    edited = (
        original
        + f"[server]\ndrain_timeout = 3.0\n[p2p]\ntrusted_peers = ['{OTHER_NODE}@127.0.0.1:9']\n"
    )
    result = cli(gate, "config", "edit", env=editor(edited))
    assert result.returncode == 0, err(result)
    assert editor.seen(0) == original  # the editor was shown the file as it was
    assert out(result) == f"saved {path}\n"
    assert path.read_text() == edited
    assert "the running daemon applies now: p2p.trusted_peers" in err(result)
    assert "needs a restart: server.drain_timeout" in err(result)
    wait_for(lambda: rpc(gate.url, "list_peers"), "the daemon to apply the edit")


def test_config_edit_keeps_the_old_file_when_the_edit_is_invalid(gate_env, tmp_path, editor):
    config = tmp_path / "gate.toml"
    valid = "[server]\nlog_level = 'info'\n"
    config.write_text(valid)
    bad = "[server]\nlog_level = 'loud'\n"
    env = {**gate_env, "GATE_SERVER__BIND": NOWHERE, **editor(bad)}
    refused = run_gate("config", "edit", "--config", str(config), env=env, input=b"n\n")
    assert refused.returncode == EXIT_BAD_INPUT
    assert f"gate: error: {config}: server.log_level: must be one of" in err(refused)
    rejected = tmp_path / "gate.toml.rejected"
    assert f"kept {config} as it was; your edit is in {rejected}" in err(refused)
    assert config.read_text() == valid
    assert rejected.read_text() == bad and rejected.stat().st_mode & 0o777 == 0o600


def test_config_edit_offers_to_edit_an_invalid_result_again(gate_env, tmp_path, editor):
    config = tmp_path / "gate.toml"
    config.write_text("[server]\nlog_level = 'info'\n")
    bad, good = "[server]\nlog_level = 'loud'\n", "[server]\nlog_level = 'debug'\n"
    env = {**gate_env, "GATE_SERVER__BIND": NOWHERE, **editor(bad, good)}
    fixed = run_gate("config", "edit", "--config", str(config), env=env, input=b"y\n")
    assert fixed.returncode == 0, err(fixed)
    assert editor.seen(1) == bad  # the second round starts from the rejected text
    assert config.read_text() == good
    assert "Edit again?" in err(fixed) and "must be one of" in err(fixed)
    assert "no daemon running; the change applies at the next start" in err(fixed)
    assert not (tmp_path / "gate.toml.rejected").exists()


def test_config_edit_starts_a_missing_file_from_a_template(gate_env, tmp_path, editor):
    from gate.cli.config import TEMPLATE

    config = tmp_path / "new" / "gate.toml"
    env = {**gate_env, "GATE_SERVER__BIND": NOWHERE}
    untouched = run_gate("config", "edit", "--config", str(config), env={**env, "EDITOR": "true"})
    assert untouched.returncode == 0 and "no changes" in out(untouched)
    assert not config.exists()

    edited = TEMPLATE.replace('# log_level = "info"', 'log_level = "debug"')
    assert edited != TEMPLATE
    created = run_gate("config", "edit", "--config", str(config), env={**env, **editor(edited)})
    assert created.returncode == 0, err(created)
    assert editor.seen(0) == TEMPLATE and config.read_text() == edited
    shown = json.loads(out(run_gate("config", "show", "--json", "--config", str(config), env=env)))
    assert shown["config"]["server"]["log_level"] == "debug"


def test_config_edit_finds_the_daemon_when_the_old_file_is_broken(gate, editor):
    path = Path(gate.args[-1])
    good = path.read_text()
    path.write_text(good + "[server]\nlog_level = 'loud'\n")  # the daemon keeps its config
    fixed = cli(gate, "config", "edit", env=editor(good))
    assert fixed.returncode == 0, err(fixed)
    assert path.read_text() == good
    assert "no daemon running" not in err(fixed)
    assert "the running daemon applies what it can; restart it" in err(fixed)


def test_config_edit_keeps_a_rejected_edit_private(gate_env, tmp_path, editor):
    config = tmp_path / "gate.toml"
    config.write_text("[server]\nlog_level = 'info'\n")
    rejected = tmp_path / "gate.toml.rejected"
    rejected.write_text("an old rejected edit, left readable\n")
    rejected.chmod(0o644)
    bad = "[security]\ncontrol_token = 'secret'\nbogus = 1\n"
    env = {**gate_env, "GATE_SERVER__BIND": NOWHERE, **editor(bad)}
    refused = run_gate("config", "edit", "--config", str(config), env=env, input=b"n\n")
    assert refused.returncode == EXIT_BAD_INPUT
    assert rejected.read_text() == bad and rejected.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if "gate" in p.name) == [
        "gate.toml",
        "gate.toml.rejected",
    ]  # no temp file left


SLOW_EDITOR_SCRIPT = """\
import pathlib, sys, time
steps, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(steps / "editing").write_text(target.read_text())
deadline = time.monotonic() + 30
while not (steps / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
target.write_text((steps / "text").read_text())
"""


def test_config_edit_keeps_a_change_made_while_the_editor_was_open(gate_env, tmp_path):
    """The editor stays open while `gate peers add` edits the file: saving does not
    undo that peer; the user's text is kept beside the file, and the message says so."""
    config = tmp_path / "gate.toml"
    config.write_text("[server]\nlog_level = 'info'\n")
    steps = tmp_path / "editor-steps"
    steps.mkdir()
    mine = "[server]\nlog_level = 'debug'\n"
    (steps / "text").write_text(mine)
    script = tmp_path / "slow-editor.py"
    script.write_text(SLOW_EDITOR_SCRIPT)
    env = {**os.environ, **gate_env, "GATE_SERVER__BIND": NOWHERE}
    editing = subprocess.Popen(
        [*GATE, "config", "edit", "--config", str(config)],
        env={**env, "EDITOR": f"{sys.executable} {script} {steps}", "VISUAL": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: (steps / "editing").exists(), "the editor to open", timeout=30)
        added = run_gate("peers", "add", OTHER_NODE, "--config", str(config), env=env)
        assert added.returncode == 0, err(added)
        (steps / "go").touch()
        stdout, stderr = editing.communicate(timeout=60)
    finally:
        if editing.poll() is None:
            editing.kill()
            editing.communicate(timeout=10)
    assert editing.returncode == EXIT_FAILURE, stderr
    assert stdout == b""
    (kept,) = tmp_path.glob("gate.toml.edit-*")
    assert stderr.decode() == (
        f"gate: error: {config} changed while you were editing it (changed: "
        f"p2p.trusted_peers); your edit was not saved, so as not to undo that change: it is "
        f"in {kept}. Run `gate config edit --config {config}` and make your change again on "
        "the file as it is now\n"
    )
    assert re.fullmatch(r"gate\.toml\.edit-\d{8}T\d{6}Z", kept.name)
    assert kept.read_text() == mine and kept.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads(config.read_text()) == {
        "server": {"log_level": "info"},
        "p2p": {"trusted_peers": [OTHER_NODE]},
    }


# --- setup ---------------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str]) -> pexpect.spawn:
    """`gate` at a terminal, Ctrl-C reaching it as a person's would. A test run started
    in the background inherits SIGINT ignored (shells do that to background jobs), and a
    Python started that way keeps ignoring it; at a terminal, SIGINT is the default."""
    return pexpect.spawn(
        GATE[0],
        [*GATE[1:], *args],
        env={**os.environ, **env},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_setup_wizard_on_a_terminal(gate_env, llama_engine):
    url = llama_engine.root_url
    child = spawn(["setup"], gate_env)
    try:
        child.expect("Looking for engines on this machine")
        # Nothing is found by itself: gate_env points providers.probe_urls nowhere.
        child.expect(r"Another engine URL.*: ")
        assert "Add " not in child.before
        child.sendline(url)
        child.expect(rf"Add openai_compatible at {re.escape(url)} \(1 model: {MODEL}\)\? \[Y/n\]: ")
        child.sendline("y")
        child.expect(r"Another engine URL \(Enter to skip\): ")
        child.sendline("")
        child.expect(r"API address \[127\.0\.0\.1:31145\]: ")
        child.sendline("127.0.0.1:0")
        child.expect(r"Your node id: (\w+)")
        node_id = child.match.group(1)
        child.expect(rf"on their machine:  gate peers add {node_id}")
        child.expect(r"Start Gate now in the background\? \[Y/n\]: ")
        child.sendline("n")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)

    config_path = Path(gate_env["XDG_CONFIG_HOME"]) / "gate" / "gate.toml"
    written = tomllib.loads(config_path.read_text())
    assert written["server"]["bind"] == "127.0.0.1:0"
    assert written["providers"]["engines"] == [
        {"name": "openai_compatible", "kind": "openai_compatible", "base_url": url}
    ]
    shown = json.loads(out(run_gate("identity", "show", "--json", env=gate_env)))
    assert shown["node_id"] == node_id and shown["created"] is False  # setup made the key

    with GateServe(gate_env) as node:  # the next `gate serve` uses what setup wrote
        assert node.node_id == node_id
        (provider,) = rpc(node.url, "list_providers")
        assert provider["base_url"] == url and provider["models"] == [MODEL]
        reply = httpx.post(
            f"{node.url}/v1/chat/completions",
            json={"model": MODEL, "messages": HI, "max_tokens": 1},
            timeout=60,
        )
        assert reply.status_code == 200


def test_setup_ctrl_c_leaves_nothing_written(gate_env):
    child = spawn(["setup"], gate_env)
    try:
        child.expect(r"Another engine URL.*: ")
        child.sendintr()
        child.expect("setup cancelled; nothing written")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == EXIT_INTERRUPTED
        assert "Traceback" not in child.before
    finally:
        child.close(force=True)
    assert not (Path(gate_env["XDG_CONFIG_HOME"]) / "gate" / "gate.toml").exists()


def test_setup_yes_for_scripts_writes_and_starts_the_daemon(gate_env, llama_engine, detached):
    config_path = Path(gate_env["XDG_CONFIG_HOME"]) / "gate" / "gate.toml"
    dead = run_gate("setup", "--yes", "--url", f"http://{NOWHERE}", env=gate_env)
    assert dead.returncode == EXIT_FAILURE
    assert f"nothing answers at http://{NOWHERE}" in err(dead) and "nothing written" in err(dead)
    assert not config_path.exists()

    url = llama_engine.root_url
    args = ["setup", "--yes", "--url", url, "--bind", "127.0.0.1:0"]
    done = run_gate(*args, env=gate_env, timeout=90)
    assert done.returncode == 0, err(done)
    text = out(done)
    pid = int(re.search(r"started in the background \(pid (\d+)\)", text).group(1))
    api = re.search(r"API     (http://\S+)", text).group(1)
    node_id = re.search(r"Your node id: (\w+)", text).group(1)
    assert f"gate peers add {node_id}" in text
    assert tomllib.loads(config_path.read_text())["providers"]["engines"][0]["base_url"] == url
    (provider,) = rpc(api, "list_providers")
    assert provider["base_url"] == url and provider["healthy"]
    stopped = run_gate("stop", env={**gate_env, "GATE_SERVER__BIND": api.removeprefix("http://")})
    assert stopped.returncode == 0
    wait_for(lambda: not alive(pid), "the daemon process to exit")


def test_setup_says_what_is_wrong_with_the_bind(gate_env):
    refused = run_gate("setup", "--yes", "--no-start", "--bind", "127.0.0.1:70000", env=gate_env)
    assert refused.returncode == EXIT_BAD_INPUT
    assert err(refused) == "gate: error: server.bind (--bind): port must be 0..65535; got 70000\n"
    assert not (Path(gate_env["XDG_CONFIG_HOME"]) / "gate" / "gate.toml").exists()


def test_setup_again_with_a_daemon_running_adds_nothing_twice(gate, llama_engine):
    path = Path(gate.args[-1])
    before = tomllib.loads(path.read_text())["providers"]["engines"]
    again = cli(gate, "setup", "--yes", "--no-start", "--url", llama_engine.root_url)
    assert again.returncode == 0, err(again)
    text = out(again)
    assert f"in gate.toml {'openai_compatible':18} {llama_engine.root_url}" in text
    assert "Added" not in text  # the engine it found is the one already configured
    assert tomllib.loads(path.read_text())["providers"]["engines"] == before
    assert f"A Gate daemon is already running at {gate.url}: restart it" in text
    assert re.search(r"Your node id: (\w+)", text).group(1) == gate.node_id


# --- the spinner ---------------------------------------------------------------------------


@pytest.fixture
def silent_engine():
    """An address that accepts connections and never answers: every check of it waits
    for its timeout (3 s)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_slow_wait_shows_a_spinner_on_a_terminal_and_nothing_in_a_pipe(
    start_gate, gate_env, silent_engine
):
    gate = start_gate(
        f"[[providers.engines]]\nname = 'slow'\nkind = 'openai_compatible'\n"
        f"base_url = '{silent_engine}'\n"
    )
    piped = cli(gate, "providers", "test", "slow")
    assert piped.returncode == EXIT_FAILURE
    assert err(piped).startswith("gate: error: slow: ") and err(piped).count("\n") == 1
    assert "\r" not in err(piped) and "testing" not in err(piped)

    bind = gate.url.removeprefix("http://")
    child = spawn(
        ["providers", "test", "slow", "--config", gate.args[-1]],
        {**gate_env, "GATE_SERVER__BIND": bind},
    )
    try:
        child.expect(r"\r\S testing slow \(\ds\)")
        child.expect(r"\r\x1b\[K")  # erased before the answer
        child.expect("gate: error: slow: ")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == EXIT_FAILURE
    finally:
        child.close(force=True)
