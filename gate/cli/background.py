"""`gate serve --background`: start the daemon detached and return once it answers.

The child is `gate serve --detached` in a session of its own (no terminal: Ctrl-C or a
closed terminal here never reaches it), stdin from /dev/null, stdout and stderr appended
to `logs/daemon.out` in the data dir. Its stdout carries the lines `gate serve` prints
once every service is up ("API listening on URL"): the parent reads them from the file,
which works for port 0 too, then asks the daemon's RPC for its status. If the child
exits first, or is not ready in time, the parent prints the last lines of the output
and exits non-zero; a child not ready in time, or that does not tell its status, is
stopped first, not left half-started.

The working directory is kept: a relative `database.url` means the directory the user
started Gate from.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final, NoReturn

import click

from gate.cli._common import (
    EXIT_FAILURE,
    command_hint,
    emit_json,
    fail,
    load_with_source,
    p2p_addresses,
    running_daemon,
    with_bind,
)
from gate.cli.progress import spinner

__all__ = ["OUTPUT_FILENAME", "start_background"]

OUTPUT_FILENAME: Final = "daemon.out"
_OUTPUT_MAX: Final = 1024 * 1024  # start afresh past this (warnings only: rarely reached)
_TAIL_LINES: Final = 20
_LISTENING = re.compile(r"API listening on (http://\S+)")


def start_background(
    config_path: Path | None, bind: str | None, *, timeout: float, as_json: bool
) -> None:
    from gate.logs import LOG_FILENAME
    from gate.rpc_client import DaemonNotRunning, RpcCallError, RpcClient

    configured, source = load_with_source(config_path)
    config = with_bind(configured, bind)
    if running := running_daemon(config):
        if running.pid is not None:  # it holds this data dir, wherever it listens
            fail(
                f"a Gate daemon already answers at {running.base or '(starting)'} "
                f"(node {running.node}) and holds the data dir {config.data_dir} "
                f"(pid {running.pid}); stop it first with "
                f"`{command_hint('stop', config_path, bind)}`"
            )
        if not running.ours:
            fail(
                f"another node's Gate daemon (node {running.node}) already answers at "
                f"{running.base}; stop it with its own config, or give this one another "
                "server.bind"
            )
        stop = command_hint("stop", config_path, bind)
        fail(
            f"a Gate daemon already answers at {running.base} (node {running.node}); "
            f"stop it first with `{stop}`",
            EXIT_FAILURE,
        )

    log_dir = config.data_dir / "logs"
    try:
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        output_path = log_dir / OUTPUT_FILENAME
        if output_path.exists() and output_path.stat().st_size > _OUTPUT_MAX:
            output_path.unlink()
        output = output_path.open("ab")
    except OSError as exc:
        fail(f"cannot write {log_dir}: {exc.strerror or exc}")
    argv = [sys.executable, "-m", "gate", "serve", "--detached"]
    if source is not None:
        argv += ["--config", str(source.resolve())]
    if bind is not None:
        argv += ["--bind", bind]
    with output:
        output.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        output.flush()
        offset = output.tell()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )

    url, problem = _wait_ready(proc, output_path, offset, timeout)
    if url is None:
        _fail_with_output(problem, _read_from(output_path, offset), output_path)
    try:
        with spinner("asking the daemon for its status"):
            status = RpcClient(config, base=url).call("node_status")
    except (DaemonNotRunning, RpcCallError) as exc:
        _stop(proc)  # leave nothing half-started
        fail(f"the daemon (pid {proc.pid}) said it listens on {url}, but: {exc}; stopped it")
    proc.returncode = 0  # it runs on alone: no ResourceWarning for a child never waited for

    facts = {
        "pid": proc.pid,
        "node_id": status["node_id"],
        "url": url,
        "p2p_address": status["p2p_address"],
        "log": str(log_dir / LOG_FILENAME),
        "output": str(output_path),
    }
    if as_json:
        emit_json(facts)
        return
    click.echo(f"Gate daemon started in the background (pid {proc.pid})")
    click.echo(f"node    {facts['node_id']}")
    click.echo(f"API     {url}")
    # One address, as `gate serve` prints it; `gate status` lists them all.
    click.echo(f"P2P     {next(iter(p2p_addresses(status['p2p_address'])), '-')}")
    click.echo(f"log     {facts['log']}  (output: {output_path})")
    # `gate stop` looks where the config says; a daemon elsewhere (--bind, port 0) is
    # found with its address in the environment.
    moved = bind is not None or configured.bind_host_port[1] == 0
    where = url.removeprefix("http://") if moved else None
    click.echo(f"stop it with `{command_hint('stop', config_path, where)}`")


def _wait_ready(
    proc: subprocess.Popen[bytes], output_path: Path, offset: int, timeout: float
) -> tuple[str | None, str]:
    """(the URL the daemon listens on, "") once ready, else (None, what went wrong)."""
    deadline = time.monotonic() + timeout
    try:
        with spinner(f"starting the daemon (pid {proc.pid})"):
            while True:
                if m := _LISTENING.search(_read_from(output_path, offset)):
                    return m.group(1), ""
                if proc.poll() is not None:
                    code = proc.returncode
                    return None, f"the daemon exited with code {code} before it was ready"
                if time.monotonic() > deadline:
                    _stop(proc)
                    return None, f"the daemon was not ready after {timeout:g}s; stopped it"
                time.sleep(0.05)
    except KeyboardInterrupt:  # the user gave up on the start: leave nothing half-started
        _stop(proc)
        raise


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _fail_with_output(message: str, text: str, output_path: Path) -> NoReturn:
    lines = text.strip().splitlines()[-_TAIL_LINES:]
    click.echo(f"gate: error: {message}; its last output ({output_path}):", err=True)
    for line in lines or ["(nothing)"]:
        click.echo(f"  {line}", err=True)
    sys.exit(EXIT_FAILURE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group is just the daemon
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
