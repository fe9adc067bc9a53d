"""The daemon itself: `gate serve` (alias `daemon`), `status`, `stop`, `logs`."""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gate import __version__
from gate.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_NO_DAEMON,
    call,
    client,
    command_hint,
    config_file,
    config_option,
    emit_json,
    fail,
    identity_failure,
    json_option,
    load,
    load_with_source,
    note,
    p2p_addresses,
    passphrase,
    rpc_failure,
    with_bind,
)
from gate.config import remove_stale_temp_files
from gate.errors import ConfigError, GateError, IdentityError, describe

if TYPE_CHECKING:
    from gate.daemon_lock import DataDirLock
    from gate.rpc_client import RpcClient

log = logging.getLogger("gate.cli")


@click.command()
@config_option
@click.option("--bind", default=None, help="Override server.bind, e.g. 127.0.0.1:0.")
@click.option(
    "--background",
    is_flag=True,
    help="Start the daemon detached, wait until it answers, print where, and return.",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    help="With --background: seconds to wait for the daemon to get ready.",
)
@click.option("--json", "as_json", is_flag=True, help="With --background: JSON output.")
@click.option("--detached", is_flag=True, hidden=True)  # set by --background for its child
def serve(
    config_path: Path | None,
    bind: str | None,
    background: bool,
    timeout: float,
    as_json: bool,
    detached: bool,
) -> None:
    """Run the Gate daemon (also `gate daemon`).

    In the foreground Ctrl-C stops it gracefully; with --background it runs detached
    until `gate stop`.
    """
    if as_json and not background:
        fail("--json goes with --background", EXIT_BAD_INPUT)
    if background:
        from gate.cli.background import start_background

        start_background(config_path, bind, timeout=timeout, as_json=as_json)
        return
    _serve_foreground(config_path, bind, detached=detached)


# `gate daemon`: the same command by another name, with help of its own (serve's own
# help names this alias, which under that name would call it an alias of itself).
serve_alias = copy.copy(serve)
serve_alias.help = "The same as `gate serve`: run the Gate daemon."
serve_alias.short_help = "The same as `gate serve`."


def _serve_foreground(config_path: Path | None, bind: str | None, *, detached: bool) -> None:
    import trio

    from gate.identity import load_or_create_identity
    from gate.logs import setup_logging
    from gate.node import Node

    config, source = load_with_source(config_path)
    config = with_bind(config, bind)
    try:
        log_file = setup_logging(
            config.server.log_level,
            config.data_dir / "logs",
            console_level="warning" if detached else None,
        )
    except OSError as exc:  # the data dir is unusable: not a directory, read-only, full
        fail(f"cannot open the log file in {config.data_dir / 'logs'}: {exc}")
    # Before the key is read or made: one daemon per data dir (gate.daemon_lock).
    lock = _lock_data_dir(config_path, config.data_dir)

    # A kill during an atomic write of gate.toml leaves its temp file behind.
    for stale in remove_stale_temp_files(config_file(config_path)):
        log.info("removed a stale temp file", extra={"path": str(stale)})

    try:
        identity, created = load_or_create_identity(config.data_dir, passphrase())
    except IdentityError as exc:
        identity_failure(exc)
    try:
        node = Node(config, identity, config_path=source)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    if created:
        log.info("created node identity", extra={"node_id": str(node.node_id)})

    def announce(info: dict[str, object] | None = None) -> None:
        # stdout carries the facts a person or script needs; logs go to stderr.
        # `gate serve --background` reads these lines from the output file.
        click.echo(f"Gate {__version__}  node {node.node_id}")
        urls = (info or {}).get("http")
        for url in urls if isinstance(urls, list) else []:
            click.echo(f"API listening on {url}")
        if isinstance(urls, list) and urls:
            lock.ready(str(urls[0]), str(node.node_id))  # how `gate stop` etc. find us
        p2p = (info or {}).get("p2p")
        if isinstance(p2p, str):
            # One node_id@ip:port, the form a peer pastes; `gate status` lists them all.
            addresses = p2p_addresses(p2p)
            click.echo(
                f"P2P address {addresses[0]}" if addresses else "P2P not started (see the log)"
            )
        click.echo(f"data {config.data_dir}  log {log_file}")

    async def main_task() -> None:
        # A plain callback as task_status: a signal during start-up then simply ends
        # the run, instead of nursery.start() complaining that nothing started.
        await node.run(task_status=_OnStarted(announce))

    failure: BaseException | None = None
    try:
        trio.run(main_task)
    except* GateError as group:
        failure = group
    except* KeyboardInterrupt:  # Ctrl-C while the final cancellation was under way
        sys.exit(EXIT_INTERRUPTED)
    if failure is not None:
        log.debug("stopped with an error", exc_info=failure)
        fail(describe(failure))
    if node.restart_requested:
        log.info("restarting")
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "gate", *sys.argv[1:]])
    log.info("stopped", extra={"console": True})


def _lock_data_dir(config_path: Path | None, data_dir: Path) -> DataDirLock:
    """This process's lock on the data dir, or exit 1 naming the daemon that holds it."""
    from gate.daemon_lock import DataDirLock, DataDirLocked

    try:
        return DataDirLock.acquire(data_dir)
    except DataDirLocked as exc:
        fail(f"{exc}; stop it first with `{command_hint('stop', config_path)}`")
    except OSError as exc:
        fail(f"cannot use the data dir {data_dir}: {exc.strerror or exc}")


class _OnStarted:
    """A trio.TaskStatus that calls a function when the task reports it has started."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def started(self, value: Any = None) -> None:
        self._callback(value)


@click.command()
@config_option
@json_option
def status(config_path: Path | None, as_json: bool) -> None:
    """What the running daemon is doing."""
    result = call(config_path, "node_status")
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"node      {result['node_id']}  (Gate {result['version']}, up "
        f"{result['uptime_s']:.0f}s, {result['in_flight']} in flight)"
    )
    for address in p2p_addresses(result["p2p_address"]) or ["-"]:
        click.echo(f"p2p       {address}")
    for name, healthy in result["providers"].items():
        click.echo(f"provider  {name:20} {'healthy' if healthy else 'down'}")
    for node_id, peer_status in result["peers"].items():
        click.echo(f"peer      {node_id}  {peer_status}")
    for relay in result.get("relays", []):
        state = relay["state"] + (f" ({relay['reason']})" if relay["reason"] else "")
        url = f"  {relay['url']}" if relay["url"] else ""
        click.echo(f"relay     {relay['relay_id']}  {state}{url}")
        if relay.get("certificate"):  # with ACME: the name's certificate from the CA
            expires = relay.get("certificate_expires", "")
            line = relay["certificate"] + (f", expires {expires}" if expires else "")
            if relay.get("certificate_error"):
                line += f"; last attempt failed: {relay['certificate_error']}"
            if relay.get("certificate_next"):
                line += f"; next attempt {relay['certificate_next']}"
            click.echo(f"          certificate {line}")


@click.command()
@config_option
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
def stop(config_path: Path | None, timeout: float) -> None:
    """Stop the running daemon gracefully (in-flight requests finish first)."""
    import time

    from gate.cli.progress import spinner
    from gate.daemon_lock import lock_holder

    config = load(config_path)
    rpc = client(config_path)
    call(config_path, "node_shutdown")
    deadline = time.monotonic() + timeout
    with spinner("stopping the daemon (in-flight requests finish first)"):
        # Until it no longer answers and its process has ended (the kernel releases its
        # lock on the data dir then), so a `gate serve` right after finds the dir free.
        while rpc.alive() or lock_holder(config.data_dir) is not None:
            if time.monotonic() > deadline:
                fail(f"the daemon is still running after {timeout:g}s")
            time.sleep(0.1)
    click.echo("stopped")


@click.command()
@config_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they come.")
@click.option(
    "--level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--lines", "-n", default=50, show_default=True, help="How many past lines.")
@json_option
def logs(config_path: Path | None, follow: bool, level: str, lines: int, as_json: bool) -> None:
    """The daemon's log: its last lines, then live ones with --follow.

    Asks the running daemon (RPC get_logs); with none running, reads its log file, so
    the last words of a daemon that stopped can still be read (and --follow, with
    nothing to follow, ends there). --follow ends when the daemon stops (exit 3 if it
    went away without a word)."""
    from gate.logs import LOG_FILENAME, plain_line, read_log
    from gate.rpc_client import DaemonNotRunning, DaemonStopped, RpcCallError

    def show(record: dict[str, Any]) -> None:
        if as_json:  # one object per line, so a script can read it as it comes
            click.echo(json.dumps(record))
        else:
            click.echo(plain_line(record))

    limit = min(max(lines, 1), 10_000)
    rpc = client(config_path)
    try:
        if follow:
            _follow(rpc, level, limit, show)
            return
        past = rpc.call("get_logs", {"level": level, "limit": limit})
    except DaemonStopped as exc:
        fail(str(exc), EXIT_NO_DAEMON)
    except DaemonNotRunning:
        # The last words of a daemon that stopped are in its file; with --follow there
        # is nothing more to wait for.
        path = load(config_path).data_dir / "logs" / LOG_FILENAME
        note(f"no daemon running; reading {path}" + (" (nothing to follow)" if follow else ""))
        try:
            past = read_log(path, level=level, limit=limit)
        except OSError:
            fail(f"no log at {path}")
    except RpcCallError as exc:
        rpc_failure(exc)
    for record in past:
        show(record)


def _follow(rpc: RpcClient, level: str, limit: int, show: Callable[[dict[str, Any]], None]) -> None:
    """`logs -f`: the event stream is open before the history is read, so a line logged
    in between is not lost; one that lands in both is shown once."""
    from contextlib import closing

    from gate.logs import LEVELS

    floor = LEVELS.index(level)
    with closing(rpc.events()) as stream:
        next(stream, None)  # `hello`: the daemon sends it once it has subscribed us
        past = rpc.call("get_logs", {"level": level, "limit": limit})
        for record in past:
            show(record)
        shown = {_log_key(record) for record in past}
        for kind, data in stream:
            if kind != "log" or LEVELS.index(data.get("level", "info")) < floor:
                continue
            if shown and _log_key(data) in shown:
                continue
            shown = set()  # a new line: every later one is new too
            show(data)
    note("the daemon stopped")


def _log_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(field) for field in ("ts", "level", "logger", "msg"))
