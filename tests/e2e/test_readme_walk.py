"""The README walked to the letter, as a newcomer walks it: Gate as a user installs it
(`pip install .` alone, the `plain_gate` fixture), a fresh home, gate.toml in the
platform config dir naming a real llama.cpp engine the way the README names one, then
the README's commands in its order: `gate serve` at a terminal, its `/health`, Ctrl-C,
`gate serve --background`, `status`, the SDK and curl examples, `keys`, a second real
node paired by `peers add` as the Peers section shows, `config validate`, `logs`,
`stop`.

Where the README shows what Gate prints, the expected text is read from README.md here
and compared with what Gate printed, with only what cannot match masked on both sides
(node ids, ports, addresses, pids, paths, the version): a change to either side fails
this test.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from unittest.mock import ANY

import httpx
import pytest

from gate import __version__

from .gate_process import GateServe, announced, data_dir
from .plain_install import REPO, check_clean, clean_env, run_plain

pytestmark = pytest.mark.e2e

README = (REPO / "README.md").read_text()
README_HOME = "/home/you/.local/share/gate"  # the data dir as the README shows it
OTHER_NODE = "rabdagg7roz4mcxbih6ebefvnbhpykojhb2yqe6wami4df3x6zqa"  # a valid id, no node
REPEATS = 3  # peers add, then list at once: the issue saw the peer missing for a second
EXIT_NO_DAEMON = 3

_FENCE = re.compile(r"^( *)```[a-z]*\n(.*?)^\1```", re.M | re.S)


def fenced_after(marker: str) -> str:
    """The README's first fenced block after `marker`, dedented (a list item's too)."""
    block = _FENCE.search(README, README.index(marker))
    assert block is not None, marker
    return textwrap.dedent(block.group(2))


# What cannot be the same in the README and on this machine, masked alike on both sides.
_MASKS = (
    (re.compile(r"\b[a-z2-7]{52}\b"), "<node-id>"),
    (re.compile(r"(?<=@)(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+"), "<ip>:<port>"),
    (re.compile(r"(?<=127\.0\.0\.1:)\d+"), "<port>"),
    (re.compile(r"\bpid \d+"), "pid <pid>"),
    (re.compile(r"(?<=Gate )\d+\.\d+\.\d+\b"), "<version>"),
)


def masked(text: str, data: Path | None = None) -> str:
    """`text` with the parts that differ between machines masked; `data`, the data dir
    of this machine's node, written as the README writes it."""
    if data is not None:
        text = text.replace(str(data), README_HOME)
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return text


def run_snippet(code: str) -> list[object]:
    """Run README Python as a user pastes it; the values of its bare expressions."""
    namespace: dict[str, object] = {}
    values = []
    for statement in ast.parse(code).body:
        if isinstance(statement, ast.Expr):
            expression = compile(ast.Expression(statement.value), "README.md", "eval")
            values.append(eval(expression, namespace))
        else:
            exec(compile(ast.Module([statement], []), "README.md", "exec"), namespace)
    return values


README_SDK = fenced_after("Point any OpenAI or Anthropic client at Gate:")
README_MODEL = re.search(r'model="([^"]+)"', README_SDK).group(1)
README_PORT = "31145"


@pytest.fixture(scope="module")
def readme_engine(tiny_model_path, tmp_path_factory):
    """llama.cpp serving the tiny model under the name the README's examples use."""
    from tests.engine.llama_server import LlamaServer

    log_dir = tmp_path_factory.mktemp("readme-engine")
    with LlamaServer(tiny_model_path, model=README_MODEL, log_dir=log_dir) as server:
        yield server


def readme_gate_toml(engine, port: int) -> str:
    """The README's "To name engines yourself" block, its local engine pointed at
    `engine`, its cloud engine left out (nothing here may reach the internet), and
    server.bind on a free port instead of 31145 (other Gates may run here)."""
    block = fenced_after("To name engines yourself:")
    local, cloud = block.rsplit("\n\n[[providers.engines]]\n", 1)
    assert 'kind = "anthropic"' in cloud, block
    for old, new in (
        ('name = "ollama"', 'name = "llama"'),
        ('kind = "ollama" ', 'kind = "llamacpp"'),
        ('"http://127.0.0.1:11434"', f'"{engine.root_url}"'),
    ):
        assert local.count(old) == 1, (old, block)
        local = local.replace(old, new)
    return f'[server]\nbind = "127.0.0.1:{port}"\n\n{local}'


def test_the_readme_walked_by_a_newcomer(plain_gate, gate_env, readme_engine, tmp_path):
    from tests.engine.llama_server import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = Path(gate_env["XDG_CONFIG_HOME"]) / "gate" / "gate.toml"  # the platform's
    config.parent.mkdir(parents=True)
    written = readme_gate_toml(readme_engine, port)
    config.write_text(written)
    home = Path(gate_env["XDG_DATA_HOME"])
    home.mkdir(parents=True)
    data = data_dir(gate_env)

    def gate(*args: str, code: int = 0, env: dict[str, str] = gate_env) -> tuple[str, str]:
        result = run_plain(plain_gate, *args, env=env)
        stderr = check_clean(result, code)
        return result.stdout.decode(), stderr

    # --- Quick start: `gate serve` at a terminal, /health, Ctrl-C ------------------------
    quick_start(plain_gate, gate_env, data, url)

    # --- `gate serve --background` and `gate status` -------------------------------------
    started, _ = gate("serve", "--background")
    pid = int(re.search(r"\(pid (\d+)\)", started).group(1))
    try:
        shown = fenced_after("- `gate serve --background` starts the daemon detached")
        assert masked(started, data) == masked(shown)
        status, _ = gate("status", "--json")
        node, _, hosts = json.loads(status)["p2p_address"].partition("@")
        assert re.search(r"^node +(\S+)$", started, re.M).group(1) == node
        addresses = [f"{node}@{host}" for host in hosts.split(",")]
        assert re.search(r"^P2P     (\S+)$", started, re.M).group(1) == addresses[0]
        status, _ = gate("status")
        assert re.findall(r"^p2p +(\S+)$", status, re.M) == addresses  # every one, a line
        assert re.search(r"^provider  llama +healthy$", status, re.M), status

        walk_the_api(url)
        walk_keys(gate, url)
        walk_peers(gate, plain_gate, gate_env, tmp_path, readme_engine, url, addresses[0])
        # Gate edited gate.toml in place: the README's comments are all still there.
        comments = re.findall(r"#.*", written)
        assert comments and [c for c in comments if c not in config.read_text()] == []

        # --- gate config validate ------------------------------------------------------
        validated, _ = gate("config", "validate")
        assert validated == f"{config}: valid\n"
        example = re.search(r"\$ (gate config validate (\S+))\n(.*)\n", README)
        (home / example.group(2)).write_text("[p2p]\nport = 70000\n")  # in the cwd
        _, refused = gate(*shlex.split(example.group(1))[1:], code=2)
        assert refused == example.group(3) + "\n"

        # --- gate logs: each line with its fields --------------------------------------
        logs, _ = gate("logs", "-n", "500")
        assert re.search(r" info +gate\.node: trusted peers updated  peers=1$", logs, re.M), logs

        # --- gate stop, and what the commands then say ---------------------------------
        stopped, _ = gate("stop")
        assert stopped == "stopped\n"
        assert not running(pid)  # `gate stop` returned once the process had ended
    finally:
        with contextlib.suppress(OSError):  # a failed walk leaves no daemon behind
            if running(pid) and b"gate" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
    _, no_daemon = gate("status", code=EXIT_NO_DAEMON)
    said = re.search(r"``(gate: error: no Gate daemon answers at .*?) ``", README, re.S)
    assert masked(no_daemon) == masked(re.sub(r"\s+", " ", said.group(1)) + "\n")
    logs, note = gate("logs")
    assert note == f"gate: no daemon running; reading {data / 'logs' / 'gate.log'}\n"
    assert logs.endswith("gate.cli: stopped\n")


def running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie that nobody reaped has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def quick_start(plain_gate: Path, env: dict[str, str], data: Path, url: str) -> None:
    """`gate serve` at a terminal prints what the README shows and nothing else; the
    README's curl of /health answers as shown; Ctrl-C says at once that it stops."""
    import pexpect

    child = pexpect.spawn(
        str(plain_gate),
        ["serve"],
        env=clean_env(env),
        cwd=env["XDG_DATA_HOME"],
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 300),
    )
    try:
        child.expect(r"data \S+  log \S+\r\n")
        screen = (child.before + child.after).replace("\r\n", "\n")
        banner = fenced_after("`make serve` prints the node id")
        assert masked(screen, data) == masked(banner)
        node_id = re.search(r"node (\S+)", screen).group(1)

        curl = fenced_after("```sh\ncurl http://127.0.0.1:31145/health")
        command, answer = curl.splitlines()
        got = subprocess.run(
            shlex.split(command.replace(README_PORT, url.rpartition(":")[2])),
            capture_output=True,
            timeout=10,
            check=True,
        )
        health = json.loads(got.stdout)
        shown = json.loads(answer.removeprefix("# "))
        # The README shows a fresh machine's (no engine yet) with the node id cut short.
        assert list(health) == list(shown), health
        assert shown["providers"] == {} and health["providers"] == {"llama": ANY}
        assert shown["peers"] == health["peers"] == {}
        assert health["status"] == shown["status"] == "ok"
        assert health["node_id"] == node_id
        assert banner.split("node ")[1].startswith(shown["node_id"].rstrip("…"))
        assert health["version"] == __version__ and shown["version"] in banner
        assert isinstance(health["uptime_s"], float) and isinstance(shown["uptime_s"], float)

        pressed = time.monotonic()
        child.sendintr()
        child.expect(r"shutting down: signal SIGINT; what is in flight has up to \S+ to finish")
        assert time.monotonic() - pressed < 2  # at once, not after the drain
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)


def walk_the_api(url: str) -> None:
    """The README's SDK code as it stands, with streamed twins of its two calls, its
    alias, and its curl of the control plane."""
    from anthropic import Anthropic
    from openai import OpenAI

    chat, message = run_snippet(README_SDK.replace(f"127.0.0.1:{README_PORT}", url[7:]))
    assert chat.model == README_MODEL and chat.choices[0].message.content
    assert message.model == README_MODEL and message.content[0].text
    hi = [{"role": "user", "content": "Hi"}]
    openai = OpenAI(base_url=f"{url}/v1", api_key="unused")
    chunks = list(
        openai.chat.completions.create(model=README_MODEL, messages=hi, max_tokens=64, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    anthropic = Anthropic(base_url=url, api_key="unused")
    with anthropic.messages.stream(model=README_MODEL, max_tokens=64, messages=hi) as stream:
        assert stream.get_final_text()
    # The README's engines example aliases a name to its model (other sections have
    # aliases of their own, e.g. Claude Code's default model).
    aliased_here = re.search(rf'aliases = \{{ "(.+)" = "{re.escape(README_MODEL)}" \}}', README)
    assert aliased_here, "the README's engines example has no alias for its model"
    alias = aliased_here.group(1)
    aliased = openai.chat.completions.create(model=alias, messages=hi, max_tokens=8)
    assert aliased.choices[0].message.content

    rpc = fenced_after("```sh\ncurl -s localhost:31145/rpc")
    status_call = rpc.split("\ncurl -N")[0].replace(README_PORT, url.rpartition(":")[2])
    answered = subprocess.run(["sh", "-c", status_call], capture_output=True, timeout=10)
    assert json.loads(answered.stdout)["result"]["providers"] == {"llama": True}


def walk_keys(gate, url: str) -> None:
    """`gate keys create|list|revoke` as the README shows them, and the key in use."""
    from openai import AuthenticationError, OpenAI

    commands = [
        shlex.split(line.split("#")[0])
        for line in fenced_after("`x-api-key: <key>`, stored in gate.db").splitlines()
    ]
    verbs = [c[:3] for c in commands]
    assert verbs == [["gate", "keys", verb] for verb in ("create", "list", "revoke")], verbs
    key, told = gate(*commands[0][1:])  # "prints the key once": the key alone on stdout
    assert re.fullmatch(r"gk_[\w-]+\n", key), key
    key_id = re.search(r"id (key_\w+)", told).group(1)
    shape = re.compile(re.sub(r"[0-9a-f]", "[0-9a-f]", commands[2][3]))  # key_2712b0dc
    assert shape.fullmatch(key_id), key_id
    listed, _ = gate(*commands[1][1:])
    assert re.search(rf"^{key_id}  active +{commands[0][3]}$", listed, re.M), listed
    with_key = OpenAI(base_url=f"{url}/v1", api_key=key.strip())
    assert README_MODEL in [m.id for m in with_key.models.list()]
    revoked, _ = gate(*commands[2][1:3], key_id)
    assert key_id in revoked
    with pytest.raises(AuthenticationError):
        with_key.models.list()


def walk_peers(gate, plain_gate, laptop_env, tmp_path, engine, url, laptop_address) -> None:
    """The Peers section's exchange between two real nodes, line by line; then `peers
    add` and `peers list` straight after it, on a gate.toml with comments (the README's,
    the laptop's) and on one that Gate wrote (the GPU box starts with none, as after
    `make serve`; its engine comes from the environment)."""
    gpubox_env = {
        **laptop_env,
        "XDG_CONFIG_HOME": str(tmp_path / "gpubox" / "config"),
        "XDG_DATA_HOME": str(tmp_path / "gpubox" / "data"),
    }
    Path(gpubox_env["XDG_DATA_HOME"]).mkdir(parents=True)
    engines = [{"name": "llama", "kind": "llamacpp", "base_url": engine.root_url}]
    with GateServe(
        clean_env({**gpubox_env, "GATE_PROVIDERS__ENGINES": json.dumps(engines)}),
        command=[str(plain_gate)],
    ) as gpubox:
        gpubox_address = next(
            line.removeprefix("P2P address ")
            for line in announced(gpubox)
            if line.startswith("P2P address ")
        )
        gpubox_config = Path(gpubox_env["XDG_CONFIG_HOME"]) / "gate" / "gate.toml"
        assert not gpubox_config.exists()
        envs = {"laptop": laptop_env, "gpubox": gpubox_env}
        placeholders = {
            "<laptop-node-id>@<laptop-ip>:41145": laptop_address,
            "<gpubox-node-id>@<gpubox-ip>:41145": gpubox_address,
        }
        block = fenced_after("with no port opened by hand.").splitlines()
        while block:
            line = block.pop(0)
            who, _, command = line.partition("$ ")
            args = shlex.split(command.split("#")[0])
            assert args[0] == "gate" and who in envs, line
            args = [placeholders.get(arg, arg) for arg in args[1:]]
            shown = []
            while block and "$ " not in block[0]:
                shown.append(block.pop(0))
            printed, _ = gate(*args, env=envs[who])
            if args == ["status"]:  # where the GPU box finds the laptop's address
                assert re.search(rf"^p2p +{re.escape(laptop_address)}$", printed, re.M)
            elif args[:2] == ["peers", "add"]:
                assert printed == f"trusted {args[2]}  (the daemon connects now)\n"
            if args == ["peers", "list"]:
                # Listed at once, as the README's note says; connected once the two
                # nodes have shaken hands (bounded: about a second on loopback).
                gpubox_id = gpubox.node_id
                assert printed.startswith(f"{gpubox_id}  "), printed
                deadline = time.monotonic() + 20
                while " connected " not in printed:
                    assert time.monotonic() < deadline, printed
                    time.sleep(0.2)
                    printed, _ = gate(*args, env=envs[who])
                assert printed.replace(gpubox_id, "gpubox...").splitlines() == shown
            else:
                assert shown == [], line
        assert gpubox_config.read_text() == f'[p2p]\ntrusted_peers = ["{laptop_address}"]\n'
        # Through the peer, as the Peers section says: X-Target-Node.
        answered = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"X-Target-Node": gpubox.node_id},
            json={"model": README_MODEL, "messages": [{"role": "user", "content": "Hi"}]},
            timeout=30,
        )
        assert answered.status_code == 200, answered.text

        for who, env in envs.items():
            for _ in range(REPEATS):
                gate("peers", "add", f"{OTHER_NODE}@127.0.0.1:9", env=env)
                listed, _ = gate("peers", "list", env=env)
                assert f"\n{OTHER_NODE}  " in f"\n{listed}", (who, listed)
                gate("peers", "remove", OTHER_NODE, env=env)
