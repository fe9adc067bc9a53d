"""`gate config show|validate|edit`."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import click

from gate.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    command_hint,
    config_file,
    config_option,
    emit_json,
    fail,
    load_with_source,
    note,
    running_daemon,
)
from gate.config import Config
from gate.errors import ConfigError

TEMPLATE: Final = """\
# gate.toml: Gate's configuration. Every key has a default: uncomment what you change.
# `gate config show` prints every key with the value in use.

[server]
# bind = "127.0.0.1:31145"    # the API; beyond loopback needs security.require_api_keys
# log_level = "info"          # debug, info, warning, error

[providers]
# probe_local = true          # with no engine below, use the local engines that answer
# aliases = { gpt4 = "llama3.2:1b" }

# [providers.probe_urls]      # where to look for them; replaces this default table
# ollama = "http://127.0.0.1:11434"
# lmstudio = "http://127.0.0.1:1234"
# llamacpp = "http://127.0.0.1:8080"
# vllm = "http://127.0.0.1:8000"

# [[providers.engines]]       # one block per engine
# name = "ollama"
# kind = "ollama"             # ollama lmstudio llamacpp vllm openai_compatible openai anthropic
# base_url = "http://127.0.0.1:11434"
# api_key_env = ""            # the variable holding its API key, if it needs one

[p2p]
# trusted_peers = []          # node ids, node_id@host:port or tickets (`gate peers add`)

[security]
# require_api_keys = false
# control_token = ""
"""


@click.group("config")
def config_group() -> None:
    """Show, check and edit the configuration."""


@config_group.command("show")
@config_option
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
def config_show(config_path: Path | None, as_json: bool) -> None:
    """Print the effective configuration (file + environment + defaults), secrets masked."""
    import tomli_w

    from gate.config import config_to_dict

    config, source = load_with_source(config_path)
    data = config_to_dict(config, mask_secrets=True)
    if as_json:
        emit_json({"source": str(source) if source else None, "config": data})
    else:
        click.echo(f"# source: {source or 'built-in defaults'}")
        click.echo(tomli_w.dumps(data), nl=False)


@config_group.command("validate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False), required=False)
def config_validate(path: Path | None) -> None:
    """Check a config file (default: the one `gate serve` would use)."""
    from gate.config import validate_config_file

    path = config_file(path)
    if not path.exists():
        fail(f"{path}: no such file", EXIT_BAD_INPUT)
    try:
        validate_config_file(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    click.echo(f"{path}: valid")


@config_group.command("edit")
@config_option
def config_edit(config_path: Path | None) -> None:
    """Edit gate.toml in $VISUAL or $EDITOR; only a valid result is saved.

    A missing file starts from a commented template. An invalid edit is shown with the
    error and can be edited again; declined, the file stays as it was and the rejected
    text is kept next to it. A file that changed while the editor was open (`gate peers
    add`, the daemon) is not overwritten: the edit is kept next to it. A running daemon
    applies what it can at once.
    """

    path = config_file(config_path)
    try:
        old_text: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old_text = None
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")
    old_config = _check(path, old_text)[0] if old_text is not None else Config()
    running_config = _load(config_path)  # where the daemon runs now: the edit may move it

    text = TEMPLATE if old_text is None else old_text
    while True:
        try:
            edited = click.edit(text, extension=".toml", require_save=True)
        except click.ClickException as exc:  # the editor could not be run or failed
            fail(f"{exc.message} (set $VISUAL or $EDITOR)")
        if edited is None or edited == old_text:
            click.echo(f"no changes; {path} left as it was")
            return
        new_config, error = _check(path, edited)
        if new_config is not None:
            break
        click.echo(f"gate: error: {error}", err=True)
        try:
            again = click.confirm("Edit again?", default=True, err=True)
        except click.Abort:  # Ctrl-C or no input: that is a no
            again = False
        if not again:
            rejected = _keep_rejected(path, edited)
            fail(f"kept {path} as it was; your edit is in {rejected}", EXIT_BAD_INPUT)
        text = edited

    try:
        saved, current = _save_unless_changed(path, old_text, edited)
    except ConfigError as exc:  # e.g. another process kept the lock: the edit stays
        fail(f"{exc}; your edit is in {_keep_edit(path, edited)}", EXIT_FAILURE)
    if not saved:
        changed = _what_changed(path, old_text, current)
        kept = _keep_edit(path, edited)
        hint = command_hint("config edit", config_path)
        fail(
            f"{path} changed while you were editing it ({changed}); your edit was not saved,"
            f" so as not to undo that change: it is in {kept}. Run `{hint}` and make your"
            " change again on the file as it is now",
            EXIT_FAILURE,
        )
    click.echo(f"saved {path}")
    # With the old file broken, where the daemon runs (on its last good config) is not
    # known here: look where the new file puts it, as the daemon would read it.
    running = running_config or _load(config_path) or new_config
    _tell_running_daemon(config_path, running, old_config, new_config)


def _save_unless_changed(path: Path, before: str | None, edited: str) -> tuple[bool, str | None]:
    """Write `edited` unless the file is no longer `before` (None: missing), as the
    editor was given it: (whether it was written, the file's text before).

    Under the file's edit lock, so no gate process changes it between the comparison and
    the write. The editor does not hold the lock: an edit may take minutes, and the
    daemon's edits must not wait that long. ConfigError when the file cannot be read,
    locked or written."""
    from gate.config import config_file_locked, write_config_atomic

    with config_file_locked(path):
        try:
            current: str | None = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        if current != before:
            return False, current
        write_config_atomic(path, edited)
    return True, current


def _what_changed(path: Path, before: str | None, now: str | None) -> str:
    """What another writer changed in the file: the keys (their values may be secrets),
    or what happened to the text when the keys cannot tell."""
    from gate.reload import changed_keys

    if now is None:
        return "it was removed"
    if before is None:
        return "it was created"
    old, new = _check(path, before)[0], _check(path, now)[0]
    if old is None or new is None:
        return "its text changed"
    keys = changed_keys(old, new)
    return f"changed: {', '.join(sorted(keys))}" if keys else "its comments or layout changed"


def _keep_edit(path: Path, text: str) -> Path:
    """Save an edit that was not written beside the file, as gate.toml.edit-<UTC time>
    (0600: it may hold secrets), never over an older one."""
    from gate.identity import save_beside

    try:
        return save_beside(path, "edit", text.encode())
    except OSError as exc:
        fail(f"{path} was not written, and your edit could not be kept: {exc}")


def _load(config_path: Path | None) -> Config | None:
    """The config as `gate serve` would load it (file and environment), or None."""
    from gate.config import load_config

    try:
        return load_config(config_path)[0]
    except ConfigError:
        return None


def _check(path: Path, text: str) -> tuple[Config | None, str]:
    """(the config, "") if `text` would load as gate.toml, else (None, the error), checked
    as `gate serve` checks a file; messages name `path`."""
    from gate.config import validate_config_text

    try:
        config = validate_config_text(text, str(path))
    except ConfigError as exc:
        return None, str(exc)
    return config, ""


def _keep_rejected(path: Path, text: str) -> Path:
    from gate.identity import write_secret_file_atomic

    rejected = path.with_name(path.name + ".rejected")
    try:
        rejected.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # 0600 whatever was there before: the text may hold an API key or the token.
        write_secret_file_atomic(rejected, text.encode())
    except OSError as exc:
        fail(f"kept {path} as it was; could not save the rejected edit: {exc}")
    return rejected


def _tell_running_daemon(
    config_path: Path | None, running: Config, old: Config | None, new: Config
) -> None:
    """Which changed keys a running daemon takes now and which wait for a restart."""
    from gate.reload import LIVE_KEYS, changed_keys

    daemon = running_daemon(running)
    if daemon is None or not daemon.ours:
        note("no daemon running; the change applies at the next start")
        return
    if old is None:  # the old file was broken: the daemon ran on what it had before
        note("the running daemon applies what it can; restart it to be sure of the rest")
        return
    changed = changed_keys(old, new)
    if changed & LIVE_KEYS:
        note(f"the running daemon applies now: {', '.join(sorted(changed & LIVE_KEYS))}")
    if changed - LIVE_KEYS:
        stop = command_hint("stop", config_path)
        start = command_hint("serve --background", config_path)
        note(f"needs a restart: {', '.join(sorted(changed - LIVE_KEYS))} ({stop}, then {start})")
