"""Runs `gate` as a real separate process, the way a user or a supervisor would."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GATE = [sys.executable, "-m", "gate"]


def run_gate(*args: str, env: dict[str, str], input: bytes | None = None, timeout: float = 30):
    return subprocess.run(
        [*GATE, *args],
        env={**os.environ, **env},
        input=input,
        capture_output=True,
        timeout=timeout,
    )


class GateServe:
    """`gate serve` in a child process; waits until it prints where it listens."""

    def __init__(
        self,
        env: dict[str, str],
        *args: str,
        bind: str = "127.0.0.1:0",
        config: str | None = None,
        command: list[str] = GATE,
        serve: tuple[str, ...] | None = None,
        ready: str = r"listening on (http://\S+)",
    ) -> None:
        """`config`: gate.toml text, written next to the data dir and passed as --config.
        `command`: how to run `gate` (another installation's, say). `serve`: the command
        instead of `serve --bind BIND` (`relay serve`), and `ready` the line that says it
        is ready, whose group becomes `url`."""
        self.command = command
        self.env = {**os.environ, **env}
        self.args = [*(serve or ("serve", "--bind", bind)), *args]
        self._ready = re.compile(ready)
        if config is not None:
            name = "relay-test.toml" if serve else "gate-test.toml"
            path = Path(env["XDG_CONFIG_HOME"]) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config)
            self.args += ["--config", str(path)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout_lines: list[str] = []
        self.url = ""
        self.node_id = ""

    def start(self, timeout: float = 20) -> GateServe:
        # stderr goes to a file: a pipe nobody reads would block a chatty child.
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while not self.url:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    stderr = self.stderr()  # before close(), which closes its file
                    self.close()
                    raise AssertionError(f"gate serve did not become ready: {stderr}")
                if selector.select(timeout=min(remaining, 0.5)):
                    buffer += self.proc.stdout.read() or b""
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        text = line.decode()
                        self.stdout_lines.append(text)
                        if m := re.search(r"node (\S+)", text):
                            self.node_id = m.group(1)
                        if m := self._ready.search(text):
                            self.url = m.group(1)
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")

    def close(self) -> None:
        self.stop()
        self._stderr_file.close()

    def __enter__(self) -> GateServe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port, TCP or (SOCK_DGRAM) UDP, free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relay_env(
    env: dict[str, str],
    domain: str,
    data_dir: Path,
    *,
    listen: str = "127.0.0.1:0",
    p2p_port: int = 0,
) -> dict[str, str]:
    """`env` and what `gate relay serve` for `domain` needs to stay on loopback: random
    ports unless given (its status server's too: the default, 31146, may be taken by
    another relay on this machine), no iroh relays, no discovery; its data in `data_dir`."""
    return {
        **env,
        "GATE_RELAYD_DOMAIN": domain,
        "GATE_RELAYD_LISTEN": listen,
        "GATE_RELAYD_P2P_PORT": str(p2p_port),
        "GATE_RELAYD_P2P_BIND_HOST": "127.0.0.1",
        "GATE_RELAYD_IROH_RELAY_MODE": "disabled",
        "GATE_RELAYD_DISCOVERY": "false",
        "GATE_RELAYD_DATA_DIR": str(data_dir),
        "GATE_RELAYD_STATUS_BIND": "127.0.0.1:0",
    }


def relay_serve(env: dict[str, str]) -> GateServe:
    """`gate relay serve` (not started yet): ready once its TLS port listens."""
    return GateServe(env, serve=("relay", "serve"), ready=r"TLS listening on (\S+)")


def p2p_address(gate: GateServe) -> str:
    """The `node_id@ip:port` a started `gate serve` or `gate relay serve` printed."""
    line = next(line for line in gate.stdout_lines if line.startswith("P2P address "))
    return line.removeprefix("P2P address ").strip()


def announced(gate) -> list[str]:
    """The lines `gate serve` printed on start: those GateServe read, and the rest of
    them (it stops reading at the API's address)."""
    lines, buffer = list(gate.stdout_lines), b""
    deadline = time.monotonic() + 10
    while not any(line.startswith("data ") for line in lines):
        assert time.monotonic() < deadline, lines
        buffer += gate.proc.stdout.read() or b""  # non-blocking: GateServe made it so
        *complete, buffer = buffer.split(b"\n")
        lines += [line.decode() for line in complete]
        time.sleep(0.05)
    return lines


def data_dir(env: dict[str, str]) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "gate"


def wait_for(predicate, what: str, timeout: float = 20.0):
    """Poll `predicate` until it returns something true (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def alive(pid: int) -> bool:
    """True while the process runs (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def detached_daemons(env: dict[str, str]) -> list[int]:
    """`gate serve --detached` processes started with this test's data dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        mine = f"XDG_DATA_HOME={env['XDG_DATA_HOME']}".encode() in environ
        if mine and b"--detached" in cmdline and alive(int(proc.name)):
            found.append(int(proc.name))
    return found
