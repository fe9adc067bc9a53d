"""Gate's configuration: gate.toml, overlaid by the environment, decoded strictly.

Resolution order, each layer overriding the one before (defaults < file < env):

1. Defaults: every field has one, so Gate runs with no file at all.
2. The file: the ``path`` argument, else ``$GATE_CONFIG``, else ``default_config_path()``
   (``~/.config/gate/gate.toml`` on Linux). A file named explicitly must exist; a missing
   default file just means "use the defaults".
3. The environment: ``GATE_<SECTION>__<KEY>=value`` sets any key, and more ``__`` reach
   deeper (``GATE_PROVIDERS__ALIASES__GPT4=llama``). Names are lowercased. A value for a
   list or a table that starts with ``[`` or ``{`` is JSON
   (``GATE_P2P__TRUSTED_PEERS='["a", "b"]'``); any other value is a string, kept as given
   (``GATE_SERVER__BIND=[::1]:8080``) and coerced to the field's type ("0" -> 0,
   "true" -> True). Shortcuts ``GATE_LOG`` (server.log_level) and
   ``DATABASE_URL`` (database.url) are applied first, so the ``GATE_SERVER__...`` form wins
   if both are set. An env var replaces the value at its key; it never merges into it.

A key that was renamed (`_RENAMED`) still loads by its old name, in the file or in the
environment, with a warning in the log; the same key spelled both ways in the file, or
both ways in the environment, is an error naming both. Errors about such a key use the
name it was given by.

The file is decoded strictly (no type coercion, no unknown keys) before the environment is
applied, so a ``port = "80"`` in a file is an error, and any error found after the overlay
comes from the environment. Every error is a ``ConfigError`` whose message names the
source (file or variable), the dotted key and what is wrong, e.g.
``/home/u/.config/gate/gate.toml: server.port: Expected int <= 65535``.

Every reading of the file that a node runs with (start, restart, the config watcher, the
RPC methods that edit the file) resolves all three layers the same way: `load_config`, or
`edit_config_file`, which returns the config as it will run.

Loading and writing block on the filesystem: call them from async code through
``trio.to_thread.run_sync``. Edits are serialized (`edit_config_file`), within one process
and across processes: every process that edits the file takes its lock file first
(`config_file_locked`, on ``.gate.toml.lock`` beside it).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import os
import re
import stat
import tempfile
import threading
import time
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import msgspec
import platformdirs
import tomli_w

from gate import toml_edit
from gate.errors import ConfigError
from gate.file_lock import lock, open_lock_file

log = logging.getLogger(__name__)

__all__ = [
    "Config",
    "ConfigSchema",
    "DatabaseConfig",
    "FieldError",
    "P2PConfig",
    "ProviderConfig",
    "ProvidersConfig",
    "RelayConfig",
    "SecurityConfig",
    "ServerConfig",
    "TlsConfig",
    "WebConfig",
    "check_exposure",
    "config_file_locked",
    "config_lock_path",
    "config_to_dict",
    "default_config_path",
    "dump_toml",
    "edit_config_file",
    "is_http_url",
    "is_loopback",
    "load_config",
    "load_layers",
    "one_of",
    "parse_bind",
    "remove_stale_temp_files",
    "validate_config_file",
    "validate_config_text",
    "write_config_atomic",
]

LOG_LEVELS = ("debug", "info", "warning", "error")
IROH_RELAY_MODES = ("default", "disabled", "custom")
PROVIDER_KINDS = (
    "ollama",
    "lmstudio",
    "llamacpp",
    "vllm",
    "openai_compatible",
    "openai",
    "anthropic",
)
_MASK = "***"
# The engines that run on this machine, at the address each listens on by default:
# where Gate looks for them (providers.probe_urls) unless told otherwise.
LOCAL_ENGINE_URLS: Final = {
    "ollama": "http://127.0.0.1:11434",
    "lmstudio": "http://127.0.0.1:1234",
    "llamacpp": "http://127.0.0.1:8080",
    "vllm": "http://127.0.0.1:8000",
}

# Range checks as msgspec constraints: enforced by decoding, not by direct construction.
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class _FieldError(ValueError):
    """Raised by ``__post_init__``. msgspec reports those at the struct, not the field, so
    this carries the field name for the error message (msgspec chains it as __cause__)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _one_of(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _FieldError(field, f"must be one of {', '.join(choices)}; got {value!r}")


# For other config files decoded by the same rules (gate.relay_config).
FieldError = _FieldError
one_of = _one_of


def _masked_repr(obj: msgspec.Struct, secrets: tuple[str, ...]) -> str:
    # A repr ends up in logs and tracebacks, so it must not carry the secret either.
    parts = []
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        parts.append(f"{name}={_MASK!r}" if name in secrets and value else f"{name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    bind: str = "127.0.0.1:31145"
    log_level: str = "info"
    data_dir: str = ""  # empty: the platform data dir
    drain_timeout: Seconds = 10.0
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 16 * 1024 * 1024
    max_in_flight: Annotated[int, msgspec.Meta(ge=0)] = 512  # 0: unlimited
    client_rate_per_minute: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0: unlimited
    client_burst: Annotated[int, msgspec.Meta(ge=1)] = 20
    # How long an engine may take to send its response head (prompt processing on a
    # slow machine can take minutes), and then the longest pause between two chunks.
    response_timeout: Seconds = 300.0
    stream_idle_timeout: Seconds = 120.0
    # A translated stream whose engine is silent this long (a long prompt before the
    # first token) gets a keepalive, so clients and proxies do not give up on it.
    stream_keepalive: Seconds = 15.0
    connect_timeout: Seconds = 5.0
    # The whole request body must arrive within this (a slow sender holds a connection).
    body_timeout: Seconds = 60.0
    # Connections the kernel queues before Gate accepts them: a burst beyond it is reset
    # (Linux caps it at net.core.somaxconn, 4096 by default).
    backlog: Annotated[int, msgspec.Meta(ge=1)] = 4096

    def __post_init__(self) -> None:
        level = self.log_level.lower()
        _one_of("log_level", level, LOG_LEVELS)
        msgspec.structs.force_setattr(self, "log_level", level)  # frozen: the only way
        try:
            parse_bind(self.bind)  # here, so a bad bind fails at load, not at serve
        except ValueError as exc:
            raise _FieldError("bind", str(exc)) from None


class P2PConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    port: Port = 41145
    bind_host: str = "0.0.0.0"  # iroh's UDP socket; 127.0.0.1 keeps it on this machine
    # iroh's relay servers, which help peers find and reach each other through NATs (not
    # Gate's own relay, the [relay] section). Formerly relay_mode and relay_urls, names
    # that still load (_RENAMED).
    iroh_relay_mode: str = "default"
    iroh_relay_urls: list[str] = []
    discovery: bool = True
    trusted_peers: list[str] = []  # node ids; their format is checked where they are used
    heartbeat_interval: Seconds = 15.0
    # What each trusted peer may ask of this node (429 with Retry-After past it).
    peer_max_in_flight: Annotated[int, msgspec.Meta(ge=0)] = 32  # 0: unlimited
    peer_rate_per_minute: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0: unlimited
    peer_burst: Annotated[int, msgspec.Meta(ge=1)] = 20

    def __post_init__(self) -> None:
        _one_of("iroh_relay_mode", self.iroh_relay_mode, IROH_RELAY_MODES)
        if self.iroh_relay_mode == "custom" and not self.iroh_relay_urls:
            raise _FieldError(
                "iroh_relay_urls", "iroh_relay_mode = 'custom' needs at least one URL"
            )


class ProviderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One inference engine."""

    name: str
    kind: str
    base_url: str = ""
    api_key: str = ""
    api_key_env: str = ""  # name of an env var holding the key, so the file holds no secret
    models: list[str] = []
    max_concurrency: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: unlimited

    def __post_init__(self) -> None:
        if not self.name:
            raise _FieldError("name", "must not be empty")
        _one_of("kind", self.kind, PROVIDER_KINDS)

    def __repr__(self) -> str:
        return _masked_repr(self, ("api_key",))


class ProvidersConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    probe_local: bool = True
    # Where the daemon's probing and `gate setup` look for each local kind of engine.
    # Someone whose Ollama listens elsewhere says so here; tests point it at engines
    # they own, so an engine the machine happens to run is never found.
    probe_urls: dict[str, str] = msgspec.field(default_factory=lambda: dict(LOCAL_ENGINE_URLS))
    health_interval: Seconds = 30.0
    engines: list[ProviderConfig] = []
    aliases: dict[str, str] = {}

    def __post_init__(self) -> None:
        names = [engine.name for engine in self.engines]
        for name in names:
            if names.count(name) > 1:  # engines are addressed by name
                raise _FieldError("engines", f"duplicate engine name {name!r}")
        for kind, url in self.probe_urls.items():
            _one_of("probe_urls", kind, tuple(LOCAL_ENGINE_URLS))
            if not is_http_url(url):
                raise _FieldError(
                    "probe_urls", f"{kind}: expected an http:// or https:// URL, got {url!r}"
                )


class RelayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = False
    servers: list[str] = []
    domain: str = ""


LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


class TlsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The certificate the node's relay door presents (PEM files). Empty: one from the
    ACME CA at `acme_directory` for each relay domain (gate.services.acme), and until it
    comes a self-signed one made in the data dir. `listen`: the same door on a TCP port
    too (HTTPS straight to the node, e.g. behind an SNI router of your own); it needs the
    files, as the other certificates name only relay names."""

    cert_file: str = ""
    key_file: str = ""
    listen: str = ""  # host:port; empty: none
    acme_directory: str = LETS_ENCRYPT_DIRECTORY  # any RFC 8555 directory URL
    acme_email: str = ""  # the account's contact; empty: none
    acme_ca_bundle: str = ""  # PEM roots trusted for the ACME server itself; empty: the system's
    # External account binding, for CAs that need it: the key id and its HMAC key
    # (base64url), or the name of an environment variable that holds the HMAC key.
    acme_eab_kid: str = ""
    acme_eab_hmac_key: str = ""
    acme_eab_hmac_key_env: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise _FieldError("cert_file", "cert_file and key_file go together")
        if not is_http_url(self.acme_directory):
            raise _FieldError(
                "acme_directory", f"expected an https:// URL, got {self.acme_directory!r}"
            )
        if self.acme_eab_hmac_key and self.acme_eab_hmac_key_env:
            raise _FieldError(
                "acme_eab_hmac_key", "give acme_eab_hmac_key or acme_eab_hmac_key_env, not both"
            )
        if bool(self.acme_eab_kid) != bool(self.acme_eab_hmac_key or self.acme_eab_hmac_key_env):
            raise _FieldError(
                "acme_eab_kid", "acme_eab_kid and an HMAC key (or its env variable) go together"
            )
        if self.listen and not self.cert_file:
            raise _FieldError("listen", "listen needs cert_file and key_file")
        if self.listen:
            try:
                parse_bind(self.listen)
            except ValueError as exc:
                raise _FieldError("listen", str(exc)) from None

    def __repr__(self) -> str:
        return _masked_repr(self, ("acme_eab_hmac_key",))


class SecurityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    require_api_keys: bool = False
    control_token: str = ""

    def __repr__(self) -> str:
        return _masked_repr(self, ("control_token",))


class WebConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True


class DatabaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    url: str = ""  # empty: gate.db in the data dir
    requests_jsonl: bool = False  # also append each request to requests.jsonl in the data dir

    def __post_init__(self) -> None:
        if self.url:
            try:
                _sqlite_path(self.url)
            except ValueError as exc:
                raise _FieldError("url", str(exc)) from None


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    p2p: P2PConfig = msgspec.field(default_factory=P2PConfig)
    providers: ProvidersConfig = msgspec.field(default_factory=ProvidersConfig)
    relay: RelayConfig = msgspec.field(default_factory=RelayConfig)
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    web: WebConfig = msgspec.field(default_factory=WebConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)

    @property
    def data_dir(self) -> Path:
        if self.server.data_dir:
            return Path(self.server.data_dir).expanduser()
        return platformdirs.user_data_path("gate")

    @property
    def database_path(self) -> Path:
        """The sqlite file. A relative path is relative to the working directory."""
        if not self.database.url:
            return self.data_dir / "gate.db"
        return _sqlite_path(self.database.url)  # cannot raise: checked at construction

    @property
    def bind_host_port(self) -> tuple[str, int]:
        """``server.bind`` split; an IPv6 host comes without its brackets."""
        return parse_bind(self.server.bind)


def is_http_url(url: str) -> bool:
    """An http:// or https:// URL with a host (and a valid port, if it has one)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` split (the host without brackets); ValueError
    says what is wrong."""
    host, sep, port_text = bind.rpartition(":")
    if not (sep and host and port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"expected HOST:PORT or [IPV6]:PORT, got {bind!r}")
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        host = host[1:-1]
    elif any(c in host for c in ":[]"):
        raise ValueError(f"an IPv6 host needs brackets, as in [::1]:31145; got {bind!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port must be 0..65535; got {port}")
    return host, port


def _sqlite_path(url: str) -> Path:
    """``sqlite:///PATH`` (``sqlite:////abs.db`` is absolute, as in SQLAlchemy) or a bare
    path. The message never repeats the URL: a postgres URL may hold a password."""
    if "://" not in url:
        return Path(url).expanduser()
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser()
    scheme = url.split("://", 1)[0]
    if scheme == "sqlite":
        raise ValueError("write sqlite:///relative.db or sqlite:////absolute/path.db")
    raise ValueError(f"only sqlite is supported (sqlite:///PATH or a file path); got {scheme}://")


def default_config_path() -> Path:
    return platformdirs.user_config_path("gate") / "gate.toml"


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, missing_ok: bool = False
) -> tuple[Config, Path | None]:
    """Resolve, read and decode the configuration; returns it and the file used (or None).

    ``missing_ok``: a named file that does not exist (yet) counts as no file, as the
    default one always does."""
    env = os.environ if env is None else env
    if path is None and env.get("GATE_CONFIG"):  # empty counts as unset, as for GATE_LOG
        path = Path(env["GATE_CONFIG"])
    file = (path or default_config_path()).expanduser()
    data = _read_toml(file, missing_ok=missing_ok or path is None)
    used = file if data is not None else None
    return _resolve({} if data is None else data, env, str(file)), used


def load_layers(
    schema: ConfigSchema, file: Path, env: Mapping[str, str], *, missing_ok: bool
) -> Any:
    """Defaults, then `file` (strictly; a missing one counts as none with `missing_ok`),
    then the environment, decoded into `schema.root`: any config file of Gate's."""
    data = _read_toml(file, missing_ok=missing_ok)
    return _layered(schema, {} if data is None else data, env, str(file))[0]


def _layered(
    schema: ConfigSchema, data: dict[str, Any], env: Mapping[str, str], name: str
) -> tuple[Any, dict[tuple[str, ...], str]]:
    """The file's table (named `name` in errors) decoded strictly on its own, then with the
    environment on top; and which variable set which key. `data` is left as it was."""
    data = copy.deepcopy(data)  # renaming and the overlay write into nested tables
    spelled = _rename_file_keys(data, name) if schema is GATE_SCHEMA else {}
    root = schema.root
    config = _decode(data, strict=True, source=lambda _: name, spelled=spelled, root=root)
    env_sources = _overlay_env(data, env, spelled, schema)
    if env_sources:
        config = _decode(
            data,
            strict=False,
            source=lambda key: _env_source(key, env_sources),
            spelled=spelled,
            root=root,
        )
    return config, env_sources


def _resolve(data: dict[str, Any], env: Mapping[str, str], name: str) -> Config:
    """The file's table (named `name` in errors) decoded strictly on its own, then with the
    environment on top: the config as a node runs with it. `data` is left as it was."""
    config, env_sources = _layered(GATE_SCHEMA, data, env, name)
    assert isinstance(config, Config)
    exposure_keys = [("server", "bind"), ("security", "require_api_keys")]
    _check_whole(config, next((env_sources[k] for k in exposure_keys if k in env_sources), name))
    return config


def _decode_file(data: dict[str, Any], name: str) -> Config:
    """A file's table alone, without the environment; `data` is left as it was."""
    data = copy.deepcopy(data)
    spelled = _rename_file_keys(data, name)
    config = _decode(data, strict=True, source=lambda _: name, spelled=spelled)
    assert isinstance(config, Config)
    _check_whole(config, name)
    return config


def _check_whole(config: Config, source: str) -> None:
    """The rules that span sections, checked wherever a file is decoded (serve, reload,
    `config validate`, `config edit`, setup, the RPC and so the web UI), so that what
    one accepts the others accept too; messages name `source`."""
    try:
        check_exposure(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def validate_config_file(path: Path) -> Config:
    """Decode one file alone, without the environment (``gate config validate PATH``)."""
    data = _read_toml(path, missing_ok=False)
    assert data is not None  # missing_ok=False raises instead
    return _decode_file(data, str(path))


def validate_config_text(text: str, name: str) -> Config:
    """Decode TOML text alone, as `validate_config_file` decodes a file; messages name
    ``name`` (the file the text is meant for)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from exc
    return _decode_file(data, name)


def _read_toml(path: Path, *, missing_ok: bool) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


_Key = tuple[str | int | None, ...]  # a key path; None stands for a dict key msgspec hides

# Keys with a new name (old -> new). The old name still loads, in the file and in the
# environment, and logs a warning saying the new one.
_RENAMED: Final[Mapping[tuple[str, str], tuple[str, str]]] = {
    # iroh's relay servers, not Gate's own relay ([relay]).
    ("p2p", "relay_mode"): ("p2p", "iroh_relay_mode"),
    ("p2p", "relay_urls"): ("p2p", "iroh_relay_urls"),
}
_RENAMED_FROM: Final = {new: old for old, new in _RENAMED.items()}
_Spelled = dict[tuple[str, str], tuple[str, str]]  # new key -> the old name it was given by


def _env_var(key: tuple[str, ...]) -> str:
    return "GATE_" + "__".join(key).upper()


def _rename_file_keys(data: dict[str, Any], name: str) -> _Spelled:
    """Move every old key in a file's table (named `name`) to its new name, in place;
    returns the keys the file gave by their old names."""
    spelled: _Spelled = {}
    for old, new in _RENAMED.items():
        table = data.get(old[0])
        if not isinstance(table, dict) or old[1] not in table:
            continue
        if new[1] in table:
            raise ConfigError(
                f"{name}: {_dotted(old)} and {_dotted(new)} are both set, and the first is "
                f"the old name of the second: keep only {_dotted(new)}"
            )
        table[new[1]] = table.pop(old[1])
        spelled[new] = old
        log.warning(
            f"{name}: {_dotted(old)} is deprecated; it still works, but the key is now "
            f"{_dotted(new)}"
        )
    return spelled


def _rename_env_keys(
    named: list[tuple[str, tuple[str, ...]]], spelled: _Spelled
) -> list[tuple[str, tuple[str, ...]]]:
    """`named` (variable, key) with every old key given its new name; `spelled` is updated
    with how the environment names each renamed key it sets."""
    set_by_new_name = {key[:2]: var for var, key in named if key[:2] in _RENAMED.values()}
    renamed = []
    for var, key in named:
        head = (key[0], key[1]) if len(key) >= 2 else None
        new = _RENAMED.get(head) if head else None
        if new is None:
            if head:
                spelled.pop(head, None)  # given by its new name: errors say that one
            renamed.append((var, key))
            continue
        if new in set_by_new_name:
            raise ConfigError(
                f"{var} and {set_by_new_name[new]} are both set, and the first is the old "
                f"name of the second: keep only {set_by_new_name[new]}"
            )
        log.warning(f"{var} is deprecated; it still works, but the name is now {_env_var(new)}")
        spelled[new] = _RENAMED_FROM[new]
        renamed.append((var, (*new, *key[2:])))
    return renamed


def _settle_renames(before: dict[str, Any], after: dict[str, Any]) -> None:
    """After an edit of a file's table: a key the file gives by one name and the edit
    sets by the other is kept once, under its new name, with the edit's value (so the web
    UI, which shows new names, can edit a file that still uses old ones)."""
    for old, new in _RENAMED.items():
        table = after.get(old[0])
        if not isinstance(table, dict) or old[1] not in table or new[1] not in table:
            continue
        was = before.get(old[0])
        was = was if isinstance(was, dict) else {}
        edited_old = old[1] not in was or was[old[1]] != table[old[1]]
        edited_new = new[1] not in was or was[new[1]] != table[new[1]]
        # Edited both or neither: the clash is the file's own, an error when it loads.
        if edited_old and not edited_new:
            table[new[1]] = table.pop(old[1])
        elif edited_new and not edited_old:
            del table[old[1]]


_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_FIELD_NAMED = re.compile(r"Object (contains unknown|missing required) field `([^`]*)`")


def _decode(
    data: dict[str, Any],
    *,
    strict: bool,
    source: typing.Callable[[_Key], str],
    spelled: _Spelled | None = None,
    root: type[Any] = Config,
) -> Any:
    try:
        return msgspec.convert(data, root, strict=strict)
    except msgspec.ValidationError as exc:
        key, problem = _explain(exc, root)
        shown = key
        if spelled and len(key) >= 2 and (head := (str(key[0]), str(key[1]))) in spelled:
            shown = (*spelled[head], *key[2:])  # by the name it was given
        raise ConfigError(f"{source(key)}: {_dotted(shown)}: {problem}") from exc


def _dotted(key: _Key) -> str:
    """("providers", "engines", 0, "kind") -> "providers.engines[0].kind"."""
    parts = [f"[{k}]" if isinstance(k, int) else "[...]" if k is None else f".{k}" for k in key]
    return "".join(parts).lstrip(".") or "(top level)"


def _explain(exc: msgspec.ValidationError, root: type[Any] = Config) -> tuple[_Key, str]:
    """Turn msgspec's "Expected `int` - at `$.server.port`" into a key path and a problem."""
    problem, sep, where = str(exc).rpartition(" - at `")
    if not sep:
        problem, where = where, "$`"
    key: list[str | int | None] = []
    for token in _PATH_TOKEN.finditer(where[1:-1]):
        key.append(token[1] if token[1] else int(token[2]) if token[2] else None)
    if isinstance(exc.__cause__, _FieldError):
        return (*key, exc.__cause__.field), exc.__cause__.problem
    if m := _FIELD_NAMED.fullmatch(problem):
        if m[1] == "missing required":
            return (*key, m[2]), "required key is missing"
        valid = ", ".join(_struct_keys(tuple(key), root))
        return (*key, m[2]), f"unknown key (valid keys: {valid})"
    return tuple(key), problem.replace("`", "")


def _struct_keys(key: _Key, root: type[Any] = Config) -> list[str]:
    """The field names of the struct at ``key``, to suggest the right spelling of a typo."""
    tp = _type_at(key, root)
    return [f.name for f in msgspec.structs.fields(tp)] if _is_struct(tp) else []


def _type_at(key: _Key, root: type[Any] = Config) -> Any:
    """The type of the value at ``key`` in a `root` (constraints stripped), or None."""
    tp: Any = root
    for part in key:
        if _is_struct(tp):
            tp = {f.name: f.type for f in msgspec.structs.fields(tp)}.get(str(part))
        else:  # list[X] or dict[str, X]: step to X
            tp = typing.get_args(tp)[-1] if typing.get_args(tp) else None
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
    return tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _takes_json(key: tuple[str, ...], root: type[Any] = Config) -> bool:
    """Whether an env value for ``key`` may be JSON: only a list's or a table's, so that a
    string may start with ``[`` (``GATE_SERVER__BIND=[::1]:8080``)."""
    tp = _type_at(key, root)
    return typing.get_origin(tp) in (list, dict) or _is_struct(tp)


@dataclass(frozen=True)
class ConfigSchema:
    """What a config file decodes to and how the environment names its keys: gate.toml's
    (`GATE_SCHEMA`: ``GATE_<SECTION>__<KEY>``) or another file read by the same rules
    (the relay's: flat keys, ``<env_prefix><KEY>``)."""

    root: type[Any]
    env_prefix: str
    sectioned: bool  # keys are section.key; else the root's own fields
    shortcuts: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def named(self, env: Mapping[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        """(variable, key) for each variable of this schema in `env`, sorted, so GATE_X__Y
        is applied before GATE_X__Y__Z and the deeper one lands inside."""
        prefix = self.env_prefix
        return [
            (var, tuple(var[len(prefix) :].lower().split("__")))
            for var in sorted(env)
            if var.startswith(prefix) and (not self.sectioned or "__" in var)
        ]


GATE_SCHEMA: Final = ConfigSchema(
    Config,
    "GATE_",
    sectioned=True,
    shortcuts=(("GATE_LOG", ("server", "log_level")), ("DATABASE_URL", ("database", "url"))),
)


def _overlay_env(
    data: dict[str, Any],
    env: Mapping[str, str],
    spelled: _Spelled,
    schema: ConfigSchema = GATE_SCHEMA,
) -> dict[tuple[str, ...], str]:
    """Apply the environment to ``data`` in place; returns which variable set which key.
    Old names are given their new ones (`spelled` says which)."""
    sources: dict[tuple[str, ...], str] = {}
    root = schema.root
    sections = _struct_keys((), root)
    what = "section" if schema.sectioned else "key"
    named = _rename_env_keys(schema.named(env), spelled)
    for var, key in [(v, k) for v, k in schema.shortcuts if env.get(v)] + named:
        if "" in key:
            raise ConfigError(
                f"{var}: malformed name; expected {schema.env_prefix}<SECTION>__<KEY>"
            )
        if key[0] not in sections:
            raise ConfigError(
                f"{var}: unknown {what} {key[0]!r} (valid {what}s: {', '.join(sections)})"
            )
        value: Any = env[var]
        if _takes_json(key, root) and value.lstrip().startswith(("[", "{")):
            try:
                value = msgspec.json.decode(value)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"{var}: invalid JSON: {exc}") from exc
        node = data
        for depth, part in enumerate(key[:-1], 1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{var}: {'.'.join(key[:depth])} is not a table")
        node[key[-1]] = value
        sources[key] = var
    return sources


def _env_source(key: _Key, sources: Mapping[tuple[str, ...], str]) -> str:
    """The variable that set ``key`` or a key above or below it (the overlay is all that
    changed since the file decoded cleanly)."""
    best, best_len = "the environment", -1
    for env_key, var in sources.items():
        n = min(len(env_key), len(key))
        same = all(k is None or k == e for k, e in zip(key[:n], env_key[:n], strict=True))
        if same and n > best_len:
            best, best_len = var, n
    return best


def config_to_dict(config: Config, *, mask_secrets: bool = True) -> dict[str, Any]:
    """Plain dicts and lists, for ``gate config show`` or JSON. Secrets become "***"."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    if mask_secrets:
        for engine in data["providers"]["engines"]:
            engine["api_key"] = _MASK if engine["api_key"] else ""
        security = data["security"]
        security["control_token"] = _MASK if security["control_token"] else ""
        tls = data["tls"]
        tls["acme_eab_hmac_key"] = _MASK if tls["acme_eab_hmac_key"] else ""
    return data


def dump_toml(config: Config) -> str:
    """The whole config as gate.toml text, secrets included, so it loads back equal."""
    return tomli_w.dumps(config_to_dict(config, mask_secrets=False))


def write_config_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: readers, and the file after a crash, see
    the old content or the new, never half. The file is 0600 as it may hold secrets."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkstemp creates the file 0600, and os.replace keeps that mode.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
        if os.name == "posix":  # make the rename itself durable; Windows can't open a dir
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a no-op once replaced
        if isinstance(exc, OSError):
            raise ConfigError(f"{path}: cannot write: {exc}") from exc
        raise


# Read, edit and write of the file in one piece: two edits at once (worker threads of
# concurrent RPC calls, or `gate peers add` beside the daemon) would each write what they
# read, and the first would be lost. Threads take _EDIT_LOCK, processes the file lock.
_EDIT_LOCK = threading.Lock()
EDIT_LOCK_PATIENCE = 10.0  # seconds; an edit holds the lock for milliseconds


def config_lock_path(path: Path) -> Path:
    """The lock file of the config file `path`: beside it, and never deleted."""
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def config_file_locked(path: Path) -> Iterator[None]:
    """Hold the edit lock of the config file `path`, against this process's other
    threads and every other process that edits it the same way: read, compare or edit,
    and write inside. ConfigError when another process keeps it past EDIT_LOCK_PATIENCE
    or the lock file cannot be opened."""
    lock_path = config_lock_path(path)
    with _EDIT_LOCK:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = open_lock_file(lock_path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot lock {lock_path}: {exc}") from exc
        try:
            try:
                locked = lock(fd, patience=EDIT_LOCK_PATIENCE)
            except OSError as exc:  # e.g. a file system without locks
                raise ConfigError(f"{path}: cannot lock {lock_path}: {exc}") from exc
            if not locked:
                raise ConfigError(
                    f"{path}: another gate process is editing this file (it holds "
                    f"{lock_path}); gave up after {EDIT_LOCK_PATIENCE:g} s, nothing written"
                )
            yield
        finally:
            os.close(fd)  # releases the lock


STALE_TEMP_AGE = 60.0  # seconds; a write takes milliseconds


def remove_stale_temp_files(path: Path, *, older_than: float = STALE_TEMP_AGE) -> list[Path]:
    """Delete what `write_config_atomic` leaves beside `path` when killed mid-write: files
    named exactly as its temporary files, older than `older_than` seconds (so a write under
    way in another process keeps its file). Returns those removed; errors are ignored."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]+\.tmp")
    removed = []
    try:
        candidates = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []
    for candidate in candidates:
        try:
            info = candidate.lstat()
            if stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime > older_than:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


def edit_config_file(
    path: Path,
    edit: typing.Callable[[dict[str, Any]], None],
    check: typing.Callable[[Config], None] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    written: typing.Callable[[], None] | None = None,
) -> Config:
    """Apply `edit` to the file's own TOML table (not the defaults), validate the result as
    `validate_config_file` would, and write it atomically. Returns the config as it will
    run: defaults, the file, then `env` (default: os.environ) on top, as `load_config`
    resolves it; `check` sees that config first and may refuse it by raising. `written`
    runs once the file is written, before any other edit can change it.

    An exception leaves the file as it was. Edits are serialized, within this process and
    across processes (`config_file_locked`), so none is lost. The file is changed in
    place: its comments and layout stay (`gate.toml_edit`)."""
    env = os.environ if env is None else env
    with config_file_locked(path):
        data = _read_toml(path, missing_ok=True) or {}
        before = copy.deepcopy(data)
        edit(data)
        _settle_renames(before, data)
        config = _resolve(data, env, str(path))
        if check is not None:
            check(config)
        document = toml_edit.parse(_read_text(path))
        toml_edit.apply_changes(document, data)
        write_config_atomic(path, toml_edit.render(document))
        if written is not None:
            written()
    return config


def _read_text(path: Path) -> str:
    """The file's text as `_read_toml` just read it ("" when there is none)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def check_exposure(config: Config) -> None:
    """The API may leave loopback only behind API keys (a ConfigError otherwise)."""
    if not is_loopback(config.bind_host_port[0]) and not config.security.require_api_keys:
        raise ConfigError(
            f"server.bind: {config.server.bind} is reachable from other machines; set "
            "security.require_api_keys = true (and create a key) or bind 127.0.0.1"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or the name localhost) is reachable from this
    machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
