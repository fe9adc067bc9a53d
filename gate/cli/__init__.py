"""The `gate` command line.

Exit codes: 0 success; 1 the operation failed (a service crashed, a file could not be
written); 2 bad input (invalid config, bad arguments, an unusable key file). Errors are
one readable line on stderr, never a traceback; GATE_LOG=debug adds the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from gate import __version__
from gate.errors import ConfigError, GateError, IdentityError, describe

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
PASSPHRASE_ENV = "GATE_PASSPHRASE"


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"gate: error: {message}", err=True)
    sys.exit(code)


def _passphrase() -> str | None:
    return os.environ.get(PASSPHRASE_ENV) or None


def _load(config_path: Path | None) -> Any:
    return _load_with_source(config_path)[0]


def _load_with_source(config_path: Path | None) -> tuple[Any, Path | None]:
    from gate.config import load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Config file (default: $GATE_CONFIG, else gate.toml in the platform config dir).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="gate")
def main() -> None:
    """Gate: secure access to the AI compute you own or trust."""


# --- serve -----------------------------------------------------------------


@main.command()
@config_option
@click.option("--bind", default=None, help="Override server.bind, e.g. 127.0.0.1:0.")
def serve(config_path: Path | None, bind: str | None) -> None:
    """Run the Gate daemon in the foreground (Ctrl-C stops it gracefully)."""
    import msgspec
    import trio

    from gate.identity import load_or_create_identity
    from gate.logs import setup_logging
    from gate.node import Node

    config, source = _load_with_source(config_path)
    if bind is not None:
        config = msgspec.structs.replace(
            config, server=msgspec.structs.replace(config.server, bind=bind)
        )
        try:
            config.bind_host_port  # noqa: B018  (validates the override like the file)
        except ConfigError as exc:
            fail(f"--bind: {exc}", EXIT_BAD_INPUT)
    log_file = setup_logging(config.server.log_level, config.data_dir / "logs")
    log = logging.getLogger("gate.cli")

    try:
        identity, created = load_or_create_identity(config.data_dir, _passphrase())
    except IdentityError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    try:
        node = Node(config, identity, config_path=source)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    if created:
        log.info("created node identity", extra={"node_id": str(node.node_id)})

    def announce(info: dict[str, object] | None = None) -> None:
        # stdout carries the facts a person or script needs; logs go to stderr.
        click.echo(f"Gate {__version__}  node {node.node_id}")
        urls = (info or {}).get("http")
        for url in urls if isinstance(urls, list) else []:
            click.echo(f"API listening on {url}")
        p2p = (info or {}).get("p2p")
        if isinstance(p2p, str):
            click.echo(f"P2P address {p2p}" if p2p else "P2P not started (see the log)")
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
        sys.exit(130)
    if failure is not None:
        log.debug("stopped with an error", exc_info=failure)
        fail(describe(failure))
    if node.restart_requested:
        log.info("restarting")
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, "-m", "gate", *sys.argv[1:]])
    log.info("stopped")


main.add_command(serve, name="daemon")


# --- config ----------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Show and check the configuration."""


@config_group.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
def config_show(config_path: Path | None, as_json: bool) -> None:
    """Print the effective configuration (file + environment + defaults), secrets masked."""
    import tomli_w

    from gate.config import config_to_dict, load_config

    try:
        config, source = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    data = config_to_dict(config, mask_secrets=True)
    if as_json:
        click.echo(
            json.dumps({"source": str(source) if source else None, "config": data}, indent=2)
        )
    else:
        click.echo(f"# source: {source or 'built-in defaults'}")
        click.echo(tomli_w.dumps(data), nl=False)


@config_group.command("validate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), required=False)
def config_validate(path: Path | None) -> None:
    """Check a config file (default: the one `gate serve` would use)."""
    from gate.config import default_config_path, validate_config_file

    path = path or Path(os.environ.get("GATE_CONFIG") or default_config_path())
    if not path.exists():
        fail(f"{path}: no such file", EXIT_BAD_INPUT)
    try:
        validate_config_file(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"{path}: valid")


# --- identity --------------------------------------------------------------


@main.group("identity")
def identity_group() -> None:
    """Show, export and import this node's Ed25519 identity."""


@identity_group.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True)
def identity_show(config_path: Path | None, as_json: bool) -> None:
    """Print the node id (creating the key on first use)."""
    from gate.identity import KEY_FILENAME, load_or_create_identity
    from gate.protocol import NodeId

    config = _load(config_path)
    try:
        identity, created = load_or_create_identity(config.data_dir, _passphrase())
    except IdentityError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    node_id = NodeId(identity.public_key_bytes)
    key_file = config.data_dir / KEY_FILENAME
    if as_json:
        click.echo(
            json.dumps(
                {
                    "node_id": str(node_id),
                    "hex": node_id.hex(),
                    "key_file": str(key_file),
                    "created": created,
                }
            )
        )
    else:
        click.echo(f"node id   {node_id}")
        click.echo(f"hex       {node_id.hex()}")
        click.echo(f"key file  {key_file}{'  (created now)' if created else ''}")


@identity_group.command("export")
@config_option
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file (mode 0600) instead of stdout.",
)
@click.option(
    "--passphrase-env",
    default=None,
    metavar="VAR",
    help="Encrypt the export with the passphrase in this environment variable.",
)
def identity_export(
    config_path: Path | None, output: Path | None, passphrase_env: str | None
) -> None:
    """Export the node key as PKCS#8 PEM (keep it secret: it *is* the node)."""
    from gate.identity import export_identity, load_identity, write_secret_file_atomic

    config = _load(config_path)
    export_passphrase = _env_secret(passphrase_env)
    try:
        identity = load_identity(config.data_dir, _passphrase())
    except IdentityError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    pem = export_identity(identity, export_passphrase)
    if output is None:
        click.echo(pem.decode(), nl=False)
        return
    try:
        write_secret_file_atomic(output, pem, overwrite=False)
    except FileExistsError:
        fail(f"{output} exists; not overwriting a key file", EXIT_BAD_INPUT)
    except OSError as exc:
        fail(f"cannot write {output}: {exc}")
    click.echo(f"exported to {output}", err=True)


@identity_group.command("import")
@config_option
@click.argument("source", type=click.File("rb"))
@click.option("--force", is_flag=True, help="Replace an existing key (it is kept as a backup).")
@click.option(
    "--source-passphrase-env",
    default=None,
    metavar="VAR",
    help="Environment variable holding the passphrase of an encrypted SOURCE.",
)
def identity_import(
    config_path: Path | None, source: Any, force: bool, source_passphrase_env: str | None
) -> None:
    """Install the PEM key in SOURCE ('-' for stdin) as this node's identity.

    The stored copy is encrypted with $GATE_PASSPHRASE when it is set.
    """
    from gate.identity import import_identity
    from gate.protocol import NodeId

    config = _load(config_path)
    try:
        identity = import_identity(
            config.data_dir,
            source.read(),
            source_passphrase=_env_secret(source_passphrase_env),
            passphrase=_passphrase(),
            force=force,
        )
    except IdentityError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"imported node id {NodeId(identity.public_key_bytes)}")


class _OnStarted:
    """A trio.TaskStatus that calls a function when the task reports it has started."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def started(self, value: Any = None) -> None:
        self._callback(value)


# --- peers -----------------------------------------------------------------


@main.group("peers")
def peers_group() -> None:
    """Trusted peers: nodes whose requests this node serves, and that it can reach.

    Changes are written to gate.toml; a running daemon applies them within seconds.
    """


def _config_path(config_path: Path | None) -> Path:
    from gate.config import default_config_path

    return config_path or Path(os.environ.get("GATE_CONFIG") or default_config_path())


@peers_group.command("add")
@config_option
@click.argument("peer")
def peers_add(config_path: Path | None, peer: str) -> None:
    """Trust PEER: a node id, node_id@host:port[,host:port] or an iroh ticket."""
    from gate.peers_config import add_trusted_peer

    path = _config_path(config_path)
    try:
        entry = add_trusted_peer(path, peer)
    except (ValueError, ConfigError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"trusted {entry}  ({path})")


@peers_group.command("remove")
@config_option
@click.argument("node_id")
def peers_remove(config_path: Path | None, node_id: str) -> None:
    """Stop trusting NODE_ID."""
    from gate.peers_config import remove_trusted_peer

    path = _config_path(config_path)
    try:
        removed = remove_trusted_peer(path, node_id)
    except (ValueError, ConfigError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    if not removed:
        fail(f"{node_id} is not a trusted peer ({path})", EXIT_BAD_INPUT)
    click.echo(f"removed {node_id}")


def _peer_rows(config_path: Path | None) -> list[dict[str, Any]]:
    """Trusted peers from the config, with live status from a running daemon when there
    is one, else what peers.json last recorded."""
    import httpx

    from gate.services.p2p import PEERS_CACHE, parse_peer_spec

    config = _load(config_path)
    live: dict[str, Any] = {}
    host, port = config.bind_host_port
    try:
        health = httpx.get(f"http://{host}:{port}/health", timeout=2).json()
        live = health.get("peers", {})
    except (httpx.HTTPError, ValueError):
        try:
            live = json.loads((config.data_dir / PEERS_CACHE).read_text())
        except (OSError, ValueError):
            live = {}
    rows = []
    for entry in config.p2p.trusted_peers:
        try:
            node_id, addresses = parse_peer_spec(entry)
        except ValueError:
            continue
        info = live.get(str(node_id), {})
        status = info.get("status", {"type": "unknown"})
        models = [m["id"] for m in (info.get("capabilities") or {}).get("supported_models", [])]
        rows.append(
            {
                "node_id": str(node_id),
                "addresses": addresses or info.get("addresses", []),
                "status": status,
                "models": models,
                "last_seen_ms": info.get("last_seen_ms"),
            }
        )
    return rows


@peers_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def peers_list(config_path: Path | None, as_json: bool) -> None:
    """Trusted peers and their status."""
    rows = _peer_rows(config_path)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no trusted peers (gate peers add NODE_ID@host:port)")
    for row in rows:
        status = row["status"].get("type", "unknown")
        click.echo(f"{row['node_id']}  {status:12}  {', '.join(row['models']) or '-'}")


@peers_group.command("info")
@config_option
@click.argument("node_id")
@click.option("--json", "as_json", is_flag=True)
def peers_info(config_path: Path | None, node_id: str, as_json: bool) -> None:
    """Everything known about one trusted peer."""
    from gate.protocol import NodeId

    try:
        canonical = str(NodeId.parse(node_id))
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    row = next((r for r in _peer_rows(config_path) if r["node_id"] == canonical), None)
    if row is None:
        fail(f"{canonical} is not a trusted peer", EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        click.echo(f"{key:13} {value}")


# --- talking to the running daemon ------------------------------------------


def _client(config_path: Path | None) -> Any:
    from gate.rpc_client import RpcClient

    return RpcClient(_load(config_path))


def _call(config_path: Path | None, method: str, params: dict[str, Any] | None = None) -> Any:
    from gate.rpc_client import DaemonNotRunning, RpcCallError

    try:
        return _client(config_path).call(method, params)
    except DaemonNotRunning as exc:
        fail(str(exc))
    except RpcCallError as exc:
        fail(str(exc), EXIT_BAD_INPUT if exc.code == -32602 else EXIT_FAILURE)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
def status(config_path: Path | None, as_json: bool) -> None:
    """What the running daemon is doing."""
    result = _call(config_path, "node_status")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"node      {result['node_id']}  (Gate {result['version']}, up "
        f"{result['uptime_s']:.0f}s, {result['in_flight']} in flight)"
    )
    click.echo(f"p2p       {result['p2p_address'] or '-'}")
    for name, healthy in result["providers"].items():
        click.echo(f"provider  {name:20} {'healthy' if healthy else 'down'}")
    for node_id, peer_status in result["peers"].items():
        click.echo(f"peer      {node_id}  {peer_status}")


@main.command()
@config_option
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
def stop(config_path: Path | None, timeout: float) -> None:
    """Stop the running daemon gracefully (in-flight requests finish first)."""
    import time

    client = _client(config_path)
    _call(config_path, "node_shutdown")
    deadline = time.monotonic() + timeout
    with click.progressbar(
        length=int(timeout * 10), label="stopping", file=sys.stderr, show_eta=False
    ) as bar:
        while client.alive():
            if time.monotonic() > deadline:
                fail(f"the daemon is still running after {timeout:g}s")
            time.sleep(0.1)
            bar.update(1)
    click.echo("stopped")


@main.group("providers")
def providers_group() -> None:
    """The engines the running daemon forwards to."""


@providers_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def providers_list(config_path: Path | None, as_json: bool) -> None:
    """Engines, their health and models."""
    providers = _call(config_path, "list_providers")
    if as_json:
        click.echo(json.dumps(providers, indent=2))
        return
    if not providers:
        click.echo("no engines (configure [[providers.engines]] or start one locally)")
    for p in providers:
        state = "healthy" if p["healthy"] else f"down: {p['last_error']}"
        click.echo(f"{p['name']:16} {p['kind']:18} {state}")
        for model in p["models"]:
            click.echo(f"  {model}")


@providers_group.command("test")
@config_option
@click.argument("name")
def providers_test(config_path: Path | None, name: str) -> None:
    """Check one engine now."""
    result = _call(config_path, "test_provider", {"name": name})
    if not result["healthy"]:
        fail(f"{name}: {result['last_error']}")
    click.echo(f"{name}: healthy, {len(result['models'])} model(s)")


@main.command()
@config_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines as they come.")
@click.option(
    "--level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--lines", "-n", default=50, show_default=True, help="How many past lines.")
def logs(config_path: Path | None, follow: bool, level: str, lines: int) -> None:
    """The daemon's log: past lines from the log file, then live ones with --follow."""
    from gate.logs import LEVELS, LOG_FILENAME, read_log
    from gate.rpc_client import DaemonNotRunning, RpcCallError

    config = _load(config_path)
    path = config.data_dir / "logs" / LOG_FILENAME
    try:
        for record in read_log(path, level=level, limit=max(lines, 1)):
            click.echo(f"{record['ts']} {record['level']:7} {record['logger']}: {record['msg']}")
    except OSError:
        if not follow:
            fail(f"no log at {path}")
    if not follow:
        return
    floor = LEVELS.index(level)
    try:
        for kind, data in _client(config_path).events():
            if kind == "log" and LEVELS.index(data.get("level", "info")) >= floor:
                click.echo(f"{data['level']:7} {data['logger']}: {data['msg']}")
    except (DaemonNotRunning, RpcCallError) as exc:
        fail(str(exc))


# --- keys ------------------------------------------------------------------


@main.group("keys")
def keys_group() -> None:
    """API keys for the node's HTTP API (stored hashed in gate.db).

    A running daemon picks up changes within a few seconds.
    """


def _with_keys(config_path: Path | None, action: Callable[[Any], Any]) -> Any:
    import trio

    from gate.services.apikeys import ApiKeys
    from gate.services.store import open_store

    config = _load(config_path)

    async def run() -> Any:
        async with open_store(config.database_path) as store:
            return await action(await ApiKeys.load(store))

    try:
        return trio.run(run)
    except GateError as exc:
        fail(describe(exc))


@keys_group.command("create")
@config_option
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def keys_create(config_path: Path | None, name: str, as_json: bool) -> None:
    """Create a key called NAME and print it (it is shown only this once)."""
    key, info = _with_keys(config_path, lambda keys: keys.create(name))
    if as_json:
        click.echo(json.dumps({"key": key, "id": info.id, "name": info.name}))
    else:
        click.echo(key)
        click.echo(
            f"id {info.id}  name {info.name}  (store the key now: Gate keeps only a hash)", err=True
        )


@keys_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True)
def keys_list(config_path: Path | None, as_json: bool) -> None:
    """List keys (never the keys themselves)."""
    import msgspec

    infos = _with_keys(config_path, lambda keys: keys.list())
    if as_json:
        click.echo(msgspec.json.encode(infos).decode())
        return
    for info in infos:
        state = "revoked" if info.revoked_at else "active"
        click.echo(f"{info.id}  {state:8}  {info.name}")


@keys_group.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config_path: Path | None, key_id: str) -> None:
    """Revoke the key with id KEY_ID."""
    if not _with_keys(config_path, lambda keys: keys.revoke(key_id)):
        fail(f"no active key with id {key_id}", EXIT_BAD_INPUT)
    click.echo(f"revoked {key_id}")


def _env_secret(var: str | None) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        fail(f"environment variable {var} is not set", EXIT_BAD_INPUT)
    return value
