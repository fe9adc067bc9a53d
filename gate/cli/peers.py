"""`gate peers add|remove|list|info`: trusted peers, through the running daemon.

`add` and `remove` also work with no daemon running: they edit gate.toml (a first-time
user trusts a friend's node before starting Gate) and say so. `list` and `info` report
live connections, which only a running daemon knows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from gate.cli._common import (
    EXIT_BAD_INPUT,
    call,
    config_file,
    config_option,
    data_dir_node,
    emit_json,
    fail,
    json_option,
    load,
    note,
    try_call,
)
from gate.errors import ConfigError


@click.group("peers")
def peers_group() -> None:
    """Trusted peers: nodes whose requests this node serves, and that it can reach."""


@peers_group.command("add")
@config_option
@click.argument("peer")
@json_option
def peers_add(config_path: Path | None, peer: str, as_json: bool) -> None:
    """Trust PEER: a node id, node_id@host:port[,host:port] or an iroh ticket."""
    live, result = try_call(config_path, "add_peer", {"peer": peer})
    if live:
        entry = result["trusted"]
    else:
        from gate.peers_config import add_trusted_peer
        from gate.protocol import NodeId

        path = config_file(config_path)
        own = data_dir_node(load(config_path, missing_ok=True).data_dir)  # "" none, None unknown
        try:
            entry = add_trusted_peer(path, peer, NodeId.parse(own) if own else None)
        except (ValueError, ConfigError) as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        note(f"no daemon running; wrote {path} (it applies at the next start)")
    if as_json:
        emit_json({"trusted": entry, "live": live})
    else:
        click.echo(f"trusted {entry}" + ("  (the daemon connects now)" if live else ""))


@peers_group.command("remove")
@config_option
@click.argument("node_id")
@json_option
def peers_remove(config_path: Path | None, node_id: str, as_json: bool) -> None:
    """Stop trusting NODE_ID."""
    live, _ = try_call(config_path, "remove_peer", {"node_id": node_id})
    if not live:
        from gate.peers_config import remove_trusted_peer

        path = config_file(config_path)
        try:
            removed = remove_trusted_peer(path, node_id)
        except (ValueError, ConfigError) as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        if not removed:
            fail(f"{node_id} is not a trusted peer ({path})", EXIT_BAD_INPUT)
        note(f"no daemon running; wrote {path} (it applies at the next start)")
    if as_json:
        emit_json({"removed": node_id, "live": live})
    else:
        click.echo(f"removed {node_id}")


@peers_group.command("list")
@config_option
@json_option
def peers_list(config_path: Path | None, as_json: bool) -> None:
    """Trusted peers, their status and models."""
    rows = [_row(info) for info in call(config_path, "list_peers")]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no trusted peers (gate peers add NODE_ID)")
    for row in rows:
        status = row["status"].get("type", "unknown")
        line = f"{row['node_id']}  {status:12}  {', '.join(row['models']) or '-'}"
        click.echo(line + _why(row["status"]))


@peers_group.command("info")
@config_option
@click.argument("node_id")
@json_option
def peers_info(config_path: Path | None, node_id: str, as_json: bool) -> None:
    """Everything the daemon knows about one trusted peer."""
    info = call(config_path, "peer_info", {"node_id": node_id}, waiting="asking about the peer")
    row = _row(info)
    if as_json:
        emit_json(row)
        return
    status = dict(row["status"])
    kind = status.pop("type", "unknown")
    since = status.pop("since_ms", None)
    details = ", ".join(f"{k} {v}" for k, v in status.items())
    click.echo(f"node id    {row['node_id']}")
    if row["name"]:
        click.echo(f"name       {row['name']}")
    click.echo(
        f"status     {kind}"
        + (f" for {_ago(since)}" if since else "")
        + (f" ({details})" if details else "")
    )
    click.echo(f"addresses  {', '.join(row['addresses']) or '-'}")
    click.echo(f"models     {', '.join(row['models']) or '-'}")
    seen = row["last_seen_ms"]
    click.echo(f"last seen  {_ago(seen) + ' ago' if seen else 'never'}")


def _row(info: dict[str, Any]) -> dict[str, Any]:
    """A peer as the RPC gives it (PeerInfo, defaults omitted), with every key present
    and the model ids pulled out of its capabilities."""
    capabilities = info.get("capabilities") or {}
    return {
        "node_id": info["node_id"],
        "name": info.get("name"),
        "addresses": info.get("addresses", []),
        "status": info.get("status", {"type": "disconnected"}),
        "models": [m["id"] for m in capabilities.get("supported_models", [])],
        "last_seen_ms": info.get("last_seen_ms"),
        "capabilities": capabilities or None,
    }


def _why(status: dict[str, Any]) -> str:
    """What a person needs beside a status that is not `connected`: the reason it failed,
    or which attempt it is connecting at."""
    if status.get("reason"):
        return f"  ({status['reason']})"
    if status.get("type") == "connecting":
        return f"  (attempt {status.get('attempt', 1)})"
    return ""


def _ago(ms: int) -> str:
    seconds = max(0, int(time.time() - ms / 1000))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
