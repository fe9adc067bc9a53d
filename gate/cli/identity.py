"""`gate identity show|export|import`: this node's Ed25519 key, on disk.

These work on the key file directly: the key is read at start, so a running daemon
is not involved (an imported key takes effect at its next start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gate.cli._common import (
    EXIT_BAD_INPUT,
    config_option,
    emit_json,
    env_secret,
    fail,
    identity_failure,
    json_option,
    load,
    passphrase,
)
from gate.errors import IdentityError


@click.group("identity")
def identity_group() -> None:
    """Show, export and import this node's Ed25519 identity."""


@identity_group.command("show")
@config_option
@json_option
def identity_show(config_path: Path | None, as_json: bool) -> None:
    """Print the node id (creating the key on first use)."""
    from gate.identity import KEY_FILENAME, load_or_create_identity
    from gate.protocol import NodeId

    config = load(config_path)
    try:
        identity, created = load_or_create_identity(config.data_dir, passphrase())
    except IdentityError as exc:
        identity_failure(exc)
    node_id = NodeId(identity.public_key_bytes)
    key_file = config.data_dir / KEY_FILENAME
    if as_json:
        emit_json(
            {
                "node_id": str(node_id),
                "hex": node_id.hex(),
                "key_file": str(key_file),
                "created": created,
            }
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

    config = load(config_path)
    export_passphrase = env_secret(passphrase_env)
    try:
        identity = load_identity(config.data_dir, passphrase())
    except IdentityError as exc:
        identity_failure(exc)
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

    config = load(config_path)
    try:
        identity = import_identity(
            config.data_dir,
            source.read(),
            source_passphrase=env_secret(source_passphrase_env),
            passphrase=passphrase(),
            force=force,
        )
    except IdentityError as exc:
        identity_failure(exc)
    click.echo(f"imported node id {NodeId(identity.public_key_bytes)}")
