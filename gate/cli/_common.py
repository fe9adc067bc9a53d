"""What every command group shares: exit codes, errors, options, the config, the RPC."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import click

from gate.errors import ConfigError, IdentityError, IdentityStorageError

if TYPE_CHECKING:
    from gate.config import Config
    from gate.rpc_client import RpcCallError, RpcClient

EXIT_FAILURE = 1  # the operation failed: a service crashed, a file could not be written
EXIT_BAD_INPUT = 2  # invalid config, bad arguments, a name that does not exist
EXIT_NO_DAEMON = 3  # the command needs the running daemon and none answers
EXIT_WRONG_NODE = 4  # the daemon that answers is another node's (another config or data dir)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
PASSPHRASE_ENV = "GATE_PASSPHRASE"

# JSON-RPC error codes (gate.services.control.rpc) that mean the caller asked for something wrong.
_RPC_BAD_INPUT = (-32602, -32004)  # invalid params, not found


def rpc_failure(exc: RpcCallError) -> NoReturn:
    """Exit for an RPC error: 4 another node's daemon, 2 bad input, else 1."""
    from gate.rpc_client import WRONG_NODE

    if exc.code == WRONG_NODE:
        fail(str(exc), EXIT_WRONG_NODE)
    fail(str(exc), EXIT_BAD_INPUT if exc.code in _RPC_BAD_INPUT else EXIT_FAILURE)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"gate: error: {message}", err=True)
    sys.exit(code)


def identity_failure(exc: IdentityError) -> NoReturn:
    """Exit for a node-key error: 1 when the system refused a read or write, else 2."""
    fail(str(exc), EXIT_FAILURE if isinstance(exc, IdentityStorageError) else EXIT_BAD_INPUT)


def note(message: str) -> None:
    """A one-line remark on stderr, so stdout stays the result (and clean JSON)."""
    click.echo(f"gate: {message}", err=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def passphrase() -> str | None:
    return os.environ.get(PASSPHRASE_ENV) or None


def env_secret(var: str | None) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        fail(f"environment variable {var} is not set", EXIT_BAD_INPUT)
    return value


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Config file (default: $GATE_CONFIG, else gate.toml in the platform config dir).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")


def load(config_path: Path | None, *, missing_ok: bool = False) -> Config:
    return load_with_source(config_path, missing_ok=missing_ok)[0]


def load_with_source(
    config_path: Path | None, *, missing_ok: bool = False
) -> tuple[Config, Path | None]:
    """The config and the file it came from; `missing_ok`: a named file that does not
    exist yet means the defaults (and the environment)."""
    from gate.config import load_config

    try:
        return load_config(config_path, missing_ok=missing_ok)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def with_bind(config: Config, bind: str | None) -> Config:
    """`config` with `--bind` applied, checked like the file's own value: what `gate serve`
    runs with, and where `gate serve --background` looks for a daemon already there."""
    import msgspec

    from gate.config import parse_bind

    if bind is None:
        return config
    try:
        parse_bind(bind)  # as ServerConfig checks it, which would raise a bare ValueError
    except ValueError as exc:
        fail(f"server.bind (--bind): {exc}", EXIT_BAD_INPUT)
    return msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, bind=bind))


def named_config(config_path: Path | None) -> Path | None:
    """The file --config or else $GATE_CONFIG names; None when neither names one."""
    if config_path is not None:
        return config_path
    env = os.environ.get("GATE_CONFIG")  # empty counts as unset, as in gate.config
    return Path(env) if env else None


def config_file(config_path: Path | None) -> Path:
    """The gate.toml a command edits: --config, else $GATE_CONFIG, else the default."""
    from gate.config import default_config_path

    return named_config(config_path) or default_config_path()


def p2p_addresses(p2p: str) -> list[str]:
    """Where the node listens for peers, as the node says it (`node_id@ip:port,ip:port`),
    split into one `node_id@ip:port` per address: each is what `gate peers add` takes."""
    node, _, hosts = p2p.partition("@")
    return [f"{node}@{host}" for host in hosts.split(",") if host]


def command_hint(command: str, config_path: Path | None, bind: str | None = None) -> str:
    """`gate COMMAND` as the user types it to reach the same daemon: with the --config
    they gave, and with `bind` (where a daemon started with --bind listens, which the
    config does not say) as GATE_SERVER__BIND."""
    import shlex

    prefix = f"GATE_SERVER__BIND={shlex.quote(bind)} " if bind else ""
    config = f" --config {shlex.quote(str(config_path))}" if config_path else ""
    return f"{prefix}gate {command}{config}"


# --- the running daemon ----------------------------------------------------------


def client(config_path: Path | None) -> RpcClient:
    return daemon_client(load(config_path))


def daemon_client(config: Config, *, timeout: float = 30.0) -> RpcClient:
    """The RPC client for the daemon of `config`'s data dir: where that daemon's lock
    says it listens (gate.daemon_lock; `server.bind` may have moved since it started),
    else at `server.bind`; and it checks that the daemon is this data dir's node before
    it asks anything else of it."""
    from gate.daemon_lock import lock_holder
    from gate.rpc_client import RpcClient

    holder = lock_holder(config.data_dir)
    base = holder.url if holder is not None and holder.url else None
    expected = holder.node_id if holder is not None and holder.node_id else None
    return RpcClient(
        config, timeout, base=base, expect_node=expected or data_dir_node(config.data_dir)
    )


def data_dir_node(data_dir: Path) -> str | None:
    """The node id of the key in `data_dir`; "" when it has none (no daemon ever ran
    there); None when it cannot be read (encrypted, no GATE_PASSPHRASE), so unknown."""
    from gate.identity import KEY_FILENAME, load_identity
    from gate.protocol import NodeId

    if not (data_dir / KEY_FILENAME).exists():
        return ""
    try:
        return str(NodeId(load_identity(data_dir, passphrase()).public_key_bytes))
    except IdentityError:
        return None


def start_hint(config_path: Path | None) -> str:
    return f"start it with `{command_hint('serve --background', config_path)}`"


class RunningDaemon(NamedTuple):
    base: str  # its URL ("" while it starts)
    node: str  # its node id, or "unknown: why" when it would not say
    pid: int | None = None  # known when it holds this config's data dir
    ours: bool = True  # whether it is the node of this config's data dir


def running_daemon(config: Config, *, timeout: float = 5.0) -> RunningDaemon | None:
    """The Gate daemon of `config`: the one holding its data dir's lock (wherever it
    listens), else whatever Gate daemon answers at `server.bind` (`ours` says whether it
    is this data dir's node); None when there is neither, or server.bind has port 0
    (every start picks a fresh port, so no daemon can be found by it)."""
    from gate.daemon_lock import lock_holder
    from gate.rpc_client import NOT_GATE, DaemonNotRunning, RpcCallError, RpcClient

    holder = lock_holder(config.data_dir)
    if holder is not None:
        return RunningDaemon(holder.url, holder.node_id or "starting", holder.pid)
    if config.bind_host_port[1] == 0:
        return None
    rpc = RpcClient(config, timeout=timeout)
    try:
        status = rpc.call("node_status")
    except DaemonNotRunning:
        return None
    except RpcCallError as exc:
        if exc.code == NOT_GATE:
            return None
        return RunningDaemon(rpc.base, f"unknown: {exc}")  # a refused token: still a daemon
    node = str(status["node_id"])
    return RunningDaemon(rpc.base, node, ours=node == data_dir_node(config.data_dir))


def no_daemon(config_path: Path | None, base: str) -> NoReturn:
    fail(f"no Gate daemon answers at {base}; {start_hint(config_path)}", EXIT_NO_DAEMON)


def call(
    config_path: Path | None,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    waiting: str = "waiting for the daemon",
) -> Any:
    """One RPC call to the daemon; a failure ends the command with a one-line message.

    `waiting` is what the spinner says if the answer takes more than a second.
    """
    from gate.cli.progress import spinner
    from gate.rpc_client import DaemonNotRunning, RpcCallError

    rpc = client(config_path)
    try:
        with spinner(waiting):
            return rpc.call(method, params)
    except DaemonNotRunning:
        no_daemon(config_path, rpc.base)
    except RpcCallError as exc:
        rpc_failure(exc)


def try_call(
    config_path: Path | None,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    waiting: str = "waiting for the daemon",
) -> tuple[bool, Any]:
    """Like `call`, but (False, None) when no daemon answers, for commands that can do
    their work without one."""
    from gate.cli.progress import spinner
    from gate.rpc_client import DaemonNotRunning, RpcCallError

    named = named_config(config_path)
    if named is not None and not named.expanduser().exists():
        return False, None  # no daemon can run on a file that is not there (yet)
    rpc = client(config_path)
    try:
        with spinner(waiting):
            return True, rpc.call(method, params)
    except DaemonNotRunning:
        return False, None
    except RpcCallError as exc:
        rpc_failure(exc)
