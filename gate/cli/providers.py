"""`gate providers list|test`: the engines of the running daemon."""

from __future__ import annotations

from pathlib import Path

import click

from gate.cli._common import call, config_option, emit_json, fail, json_option


@click.group("providers")
def providers_group() -> None:
    """The engines the running daemon forwards to."""


@providers_group.command("list")
@config_option
@json_option
def providers_list(config_path: Path | None, as_json: bool) -> None:
    """Engines, their health and models."""
    providers = call(config_path, "list_providers")
    if as_json:
        emit_json(providers)
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
@json_option
def providers_test(config_path: Path | None, name: str, as_json: bool) -> None:
    """Check one engine now (exit 1 when it is down)."""
    result = call(config_path, "test_provider", {"name": name}, waiting=f"testing {name}")
    if as_json:
        emit_json(result)
    if not result["healthy"]:
        fail(f"{name}: {result['last_error']}")
    if not as_json:
        click.echo(f"{name}: healthy, {len(result['models'])} model(s)")
