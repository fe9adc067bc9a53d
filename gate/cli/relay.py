"""`gate relay`: run a relay, which gives nodes public HTTPS names without open ports
(gate.services.relay)."""

from __future__ import annotations

from pathlib import Path

import click

from gate import __version__
from gate.cli._common import EXIT_BAD_INPUT, fail, identity_failure, passphrase
from gate.errors import ConfigError, GateError, IdentityError, describe

__all__ = ["relay_group"]


@click.group("relay")
def relay_group() -> None:
    """Run a Gate relay: public HTTPS to nodes, TLS passed through by name."""


@relay_group.command("serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="relay.toml (default: $GATE_RELAY_CONFIG, else relay.toml beside gate.toml).",
)
def serve(config_path: Path | None) -> None:
    """Run the relay in the foreground; Ctrl-C stops it."""
    import trio

    from gate.identity import load_or_create_identity
    from gate.logs import setup_logging
    from gate.nursery import Service, Supervisor, run_until_signal
    from gate.protocol import NodeId
    from gate.relay_config import load_relay_config
    from gate.services.relay.service import RelayService

    try:
        config = load_relay_config(config_path)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    data_dir = config.data_path
    try:
        log_file = setup_logging(config.log_level, data_dir / "logs")
    except OSError as exc:
        fail(f"cannot open the log file in {data_dir / 'logs'}: {exc}")
    try:
        identity, _ = load_or_create_identity(data_dir, passphrase())
    except IdentityError as exc:
        identity_failure(exc)
    node_id = NodeId(identity.public_key_bytes)
    relay = RelayService(config, secret_key=identity.secret_key_bytes, node_id=node_id)
    supervisor = Supervisor([Service("relay", relay.run)], drain_timeout=5.0)

    class Announce:
        def started(self, info: dict[str, object] | None = None) -> None:
            started = (info or {}).get("relay")
            started = started if isinstance(started, dict) else {}
            click.echo(f"Gate relay {__version__}  node {node_id}  domain {config.domain}")
            p2p = str(started.get("p2p", ""))
            click.echo(f"P2P address {p2p.split(',')[0]}")
            listening = started.get("listen")
            for address in listening if isinstance(listening, list) else []:
                click.echo(f"TLS listening on {address}")
            status = started.get("status")
            for url in status if isinstance(status, list) else []:
                click.echo(f"Status on {url}/health and {url}/metrics")
            click.echo(f"data {data_dir}  log {log_file}", nl=True)

    async def main() -> None:
        await run_until_signal(supervisor, task_status=Announce())

    try:
        trio.run(main)
    except* GateError as group:
        fail(describe(group))
