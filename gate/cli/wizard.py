"""`gate setup`: the interactive first run.

Looks for engines (each local kind at its providers.probe_urls address, by default
the port it listens on, and any URL given), asks which to use and where the API should
listen, writes gate.toml in one atomic step, makes sure the node has its key, prints
the node id and how a friend trusts it, and offers to start the daemon. Nothing is
written before the engines and the address are chosen, so Ctrl-C (or end of input)
during those questions leaves the machine as it was. `--yes` takes every default
without asking, for scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click

from gate.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    command_hint,
    config_file,
    config_option,
    fail,
    identity_failure,
    passphrase,
    running_daemon,
    try_call,
)
from gate.config import Config, is_http_url, is_loopback, parse_bind
from gate.errors import ConfigError, IdentityError

DEFAULT_BIND = "127.0.0.1:31145"


@click.command()
@config_option
@click.option("--yes", "-y", is_flag=True, help="Take every default without asking.")
@click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="URL",
    help="Also look for an engine at URL (repeatable), e.g. http://127.0.0.1:8081.",
)
@click.option("--bind", default=None, help=f"Where the API listens (default {DEFAULT_BIND}).")
@click.option(
    "--start/--no-start",
    default=None,
    help="Start the daemon in the background at the end (asked; --yes starts it).",
)
def setup(
    config_path: Path | None, yes: bool, urls: tuple[str, ...], bind: str | None, start: bool | None
) -> None:
    """First run: find engines, write gate.toml, show the node id, start Gate."""
    path = config_file(config_path)
    written = False
    try:
        existing = _existing(path)
        for url in urls:
            if not is_http_url(url):
                fail(f"{url!r}: give an http:// or https:// URL", EXIT_BAD_INPUT)
        click.echo(f"Gate setup writes {path}.")
        if existing is not None and not yes:
            click.echo("It exists: setup adds to it, keeping its comments and layout.")
            if not click.confirm("Continue?", default=True):
                _cancelled("nothing written")
        config = existing or Config()
        engines = _choose_engines(config_path, config, list(urls), yes)
        chosen_bind, require_keys = _choose_bind(bind or config.server.bind, ask=not yes)
        _write(path, engines, chosen_bind, require_keys)
        written = True
        node_id = _identity(path)
        _show_peering(node_id)
        _maybe_start(config_path, path, existing, start, yes)
    except (KeyboardInterrupt, click.Abort):
        _cancelled(f"{path} was written" if written else "nothing written")


def _cancelled(what: str) -> NoReturn:
    click.echo(f"\ngate: setup cancelled; {what}", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _existing(path: Path) -> Config | None:
    from gate.config import validate_config_file

    if not path.exists():
        return None
    try:
        return validate_config_file(path)
    except ConfigError as exc:
        fail(f"{exc} (fix it first: gate config edit)", EXIT_BAD_INPUT)


# --- engines -------------------------------------------------------------------


def _choose_engines(
    config_path: Path | None, config: Config, urls: list[str], yes: bool
) -> list[dict[str, str]]:
    """The [[providers.engines]] entries to add."""
    from gate.services.engines.registry import strip_v1

    configured = {strip_v1(e.base_url) for e in config.providers.engines}
    taken = {e.name for e in config.providers.engines}
    chosen: list[dict[str, str]] = []

    def offer(engine: dict[str, Any]) -> None:
        if strip_v1(engine["base_url"]) in configured:
            return
        models = engine["models"]
        question = (
            f"Add {engine['kind']} at {engine['base_url']} "
            f"({len(models)} model{'s' if len(models) != 1 else ''}: {_short(models)})?"
        )
        if yes or click.confirm(question, default=True):
            name = _name(engine["kind"], engine["base_url"], taken)
            taken.add(name)
            configured.add(strip_v1(engine["base_url"]))
            chosen.append({"name": name, "kind": engine["kind"], "base_url": engine["base_url"]})

    click.echo("Looking for engines on this machine...")
    found = _discover(config_path, urls)
    _show(found, configured)
    if yes:  # a script named these URLs: one that does not answer is an error
        for engine in found[len(found) - len(urls) :]:
            if not engine["found"]:
                fail(f"nothing answers at {engine['base_url']}: {engine['error']}; nothing written")
    for engine in found:
        if engine["found"]:
            offer(engine)
    while not yes:
        url = click.prompt(
            "Another engine URL (Enter to skip)", default="", show_default=False
        ).strip()
        if not url:
            break
        if not is_http_url(url):
            click.echo(f"  {url!r}: give an http:// or https:// URL")
            continue
        engine = _discover(config_path, [url])[-1]  # the given URLs come last
        if engine["found"]:
            _show([engine], configured)
            offer(engine)
        else:
            click.echo(f"  nothing answers at {url}: {engine['error']}")
    if not chosen and not config.providers.engines:
        click.echo(
            "No engine added: at start Gate uses the local engines that answer where it "
            "looks for them (providers.probe_local, providers.probe_urls)."
        )
    return chosen


def _discover(config_path: Path | None, urls: list[str]) -> list[dict[str, Any]]:
    """Engines at the providers.probe_urls addresses and at `urls`: through the running
    daemon's RPC (its config) when there is one, else from here (gate.toml and the
    environment, as `gate serve` would read them)."""
    live, found = try_call(
        config_path, "discover_providers", {"urls": urls}, waiting="looking for engines"
    )
    if live:
        return list(found)
    import trio

    from gate.cli.progress import spinner
    from gate.config import load_config
    from gate.services.engines.client import UpstreamClient
    from gate.services.engines.registry import discover_engines

    try:
        probe_urls = load_config(config_path, missing_ok=True)[0].providers.probe_urls
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)

    async def run() -> list[dict[str, Any]]:
        client = UpstreamClient()
        try:
            engines = await discover_engines(client, probe_urls, urls)
        finally:
            await client.aclose()
        return [
            {
                "kind": p.kind,
                "base_url": p.base_url,
                "found": p.healthy,
                "models": sorted(p.models),
                "error": p.last_error,
            }
            for p in engines
        ]

    with spinner("looking for engines"):
        return trio.run(run)


def _show(found: list[dict[str, Any]], configured: set[str]) -> None:
    from gate.services.engines.registry import strip_v1

    missing = []
    for engine in found:
        if not engine["found"]:
            missing.append(f"{engine['kind']} ({engine['base_url']})")
            continue
        state = "in gate.toml" if strip_v1(engine["base_url"]) in configured else "found"
        models = engine["models"]
        click.echo(
            f"  {state:12} {engine['kind']:18} {engine['base_url']}  "
            f"{len(models)} model{'s' if len(models) != 1 else ''}: {_short(models)}"
        )
    if missing:
        click.echo(f"  nothing at   {', '.join(missing)}")


def _short(models: list[str], limit: int = 3) -> str:
    more = f", +{len(models) - limit} more" if len(models) > limit else ""
    return (", ".join(models[:limit]) or "none listed") + more


def _name(kind: str, url: str, taken: set[str]) -> str:
    """The engine's name in gate.toml: its kind, else kind-port, else numbered."""
    port = urlsplit(url).port
    candidates = [kind, f"{kind}-{port}"] if port else [kind]
    candidates += [f"{kind}-{n}" for n in range(2, 100)]
    return next(c for c in candidates if c not in taken)


# --- the API address -------------------------------------------------------------


def _choose_bind(default: str, *, ask: bool) -> tuple[str, bool]:
    """(server.bind, whether to require API keys): beyond loopback needs keys."""
    while True:
        bind = click.prompt("API address", default=default).strip() if ask else default
        try:
            host, _ = parse_bind(bind)
        except ValueError as exc:
            if not ask:
                fail(f"server.bind (--bind): {exc}", EXIT_BAD_INPUT)
            click.echo(f"  {exc} (e.g. {DEFAULT_BIND})")
            continue
        if is_loopback(host):
            return bind, False
        click.echo(
            f"  {bind} is reachable from other machines, so every request will need an API "
            "key (security.require_api_keys)."
        )
        if not ask:
            return bind, True
        if click.confirm("Require API keys and listen there?", default=True):
            return bind, True


# --- writing, the identity, what next ------------------------------------------------


def _write(path: Path, engines: list[dict[str, str]], bind: str, require_keys: bool) -> None:
    from gate.config import edit_config_file

    def edit(data: dict[str, Any]) -> None:
        data.setdefault("server", {})["bind"] = bind
        if require_keys:
            data.setdefault("security", {})["require_api_keys"] = True
        if engines:
            providers = data.setdefault("providers", {})
            providers["engines"] = [*providers.get("engines", []), *engines]

    try:
        edit_config_file(path, edit)  # validated, then written atomically
    except ConfigError as exc:
        fail(str(exc))
    for engine in engines:
        click.echo(f"Added {engine['name']} ({engine['kind']}, {engine['base_url']}).")
    click.echo(f"Wrote {path}.")


def _identity(path: Path) -> str:
    from gate.config import load_config
    from gate.identity import KEY_FILENAME, load_or_create_identity
    from gate.protocol import NodeId

    try:
        config, _ = load_config(path)
        identity, created = load_or_create_identity(config.data_dir, passphrase())
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except IdentityError as exc:
        identity_failure(exc)
    node_id = str(NodeId(identity.public_key_bytes))
    key = config.data_dir / KEY_FILENAME
    click.echo("")
    click.echo(f"Your node id: {node_id}")
    click.echo(f"  (its key: {key}{', created now' if created else ''}; keep it private)")
    return node_id


def _show_peering(node_id: str) -> None:
    click.echo("")
    click.echo("To share engines with a friend's Gate, each of you trusts the other's node:")
    click.echo(f"  on their machine:  gate peers add {node_id}")
    click.echo("  on this machine:   gate peers add THEIR_NODE_ID")
    click.echo("")


def _maybe_start(
    config_path: Path | None, path: Path, existing: Config | None, start: bool | None, yes: bool
) -> None:
    from gate.cli.background import start_background

    start_command = command_hint("serve --background", config_path)
    for config in (existing, _load(path)):
        running = running_daemon(config) if config is not None else None
        if running is not None:
            click.echo(
                f"A Gate daemon is already running at {running.base}: restart it to use the "
                f"new settings ({command_hint('stop', config_path)}, then {start_command})."
            )
            return
    if start is None:
        start = yes or click.confirm("Start Gate now in the background?", default=True)
    if start:
        start_background(config_path, None, timeout=60, as_json=False)
    else:
        click.echo(f"Start it later with `{start_command}`.")


def _load(path: Path) -> Config | None:
    from gate.config import load_config

    try:
        return load_config(path)[0]
    except ConfigError:
        return None
