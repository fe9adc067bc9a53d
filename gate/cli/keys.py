"""`gate keys create|list|revoke`: API keys, through the running daemon.

With no daemon running they work on gate.db directly (the daemon reads it at start) and
say so: keys are data at rest, and a key made before the first start is a normal setup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from gate.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    config_option,
    emit_json,
    fail,
    json_option,
    load,
    note,
    try_call,
)
from gate.errors import GateError, collapse_group, describe


@click.group("keys")
def keys_group() -> None:
    """API keys for the node's HTTP API (stored hashed in gate.db)."""


@keys_group.command("create")
@config_option
@click.argument("name")
@json_option
def keys_create(config_path: Path | None, name: str, as_json: bool) -> None:
    """Create a key called NAME and print it (it is shown only this once)."""
    live, result = try_call(config_path, "create_api_key", {"name": name})
    if live:
        key, info = result["key"], result["info"]
    else:

        async def create(keys: Any) -> tuple[str, dict[str, Any]]:
            key, info = await keys.create(name)
            return key, _builtins(info)

        key, info = _offline(config_path, "wrote", create)
    if as_json:
        emit_json({"key": key, "id": info["id"], "name": info["name"], "live": live})
    else:
        click.echo(key)
        click.echo(
            f"id {info['id']}  name {info['name']}  (store the key now: Gate keeps only a hash)",
            err=True,
        )
        note(_what_keys_imply(load(config_path, missing_ok=True).security.require_api_keys))


def _what_keys_imply(required: bool) -> str:
    """What a key changes for the API's clients, as the node is configured."""
    if required:
        return "every API request needs a valid key (security.require_api_keys is on)"
    return (
        "security.require_api_keys is off: requests without a key are still served (this "
        "machine only); one that presents a Gate key (gk_...) must present a valid one, "
        "else 401"
    )


@keys_group.command("list")
@config_option
@json_option
def keys_list(config_path: Path | None, as_json: bool) -> None:
    """List keys (never the keys themselves)."""
    live, infos = try_call(config_path, "list_api_keys")
    if not live:

        async def list_keys(keys: Any) -> list[dict[str, Any]]:
            return [_builtins(info) for info in await keys.list()]

        infos = _offline(config_path, "read", list_keys)
    if as_json:
        emit_json(infos)
        return
    if not infos:
        click.echo("no API keys (gate keys create NAME)")
    for info in infos:
        state = "revoked" if info.get("revoked_at") else "active"
        click.echo(f"{info['id']}  {state:8}  {info['name']}")


@keys_group.command("revoke")
@config_option
@click.argument("key_id")
@json_option
def keys_revoke(config_path: Path | None, key_id: str, as_json: bool) -> None:
    """Revoke the key with id KEY_ID."""
    live, _ = try_call(config_path, "revoke_api_key", {"id": key_id})
    if not live:

        async def revoke(keys: Any) -> bool:
            revoked: bool = await keys.revoke(key_id)
            return revoked

        if not _offline(config_path, "wrote", revoke):
            fail(f"no active key {key_id!r}", EXIT_BAD_INPUT)
    if as_json:
        emit_json({"revoked": key_id, "live": live})
    else:
        click.echo(f"revoked {key_id}")


def _offline(config_path: Path | None, verb: str, action: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `action(ApiKeys)` on gate.db itself, for when no daemon answers."""
    import trio

    from gate.services.store.apikeys import ApiKeys
    from gate.services.store.database import open_store

    config = load(config_path, missing_ok=True)  # a file named but not written yet: defaults

    async def run() -> Any:
        async with open_store(config.database_path) as store:
            return await action(await ApiKeys.load(store))

    failure: BaseException | None = None
    code = EXIT_BAD_INPUT
    try:
        result = trio.run(run)
    except* ValueError as group:  # a bad key name
        failure = group
    except* GateError as group:  # the database cannot be opened or written
        failure, code = group, EXIT_FAILURE
    if failure is not None:
        error = collapse_group(failure)
        fail(str(error) if isinstance(error, ValueError) else describe(error), code)
    note(f"no daemon running; {verb} {config.database_path}")
    return result


def _builtins(info: Any) -> dict[str, Any]:
    import msgspec

    data: dict[str, Any] = msgspec.to_builtins(info)
    return data
