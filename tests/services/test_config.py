import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from gate.config import (
    STALE_TEMP_AGE,
    Config,
    DatabaseConfig,
    P2PConfig,
    ProviderConfig,
    ProvidersConfig,
    RelayConfig,
    SecurityConfig,
    ServerConfig,
    WebConfig,
    config_to_dict,
    default_config_path,
    dump_toml,
    edit_config_file,
    is_loopback,
    load_config,
    parse_bind,
    remove_stale_temp_files,
    validate_config_file,
    validate_config_text,
    write_config_atomic,
)
from gate.errors import ConfigError

STRUCTS = [
    Config,
    ServerConfig,
    P2PConfig,
    ProviderConfig,
    ProvidersConfig,
    RelayConfig,
    SecurityConfig,
    WebConfig,
    DatabaseConfig,
]


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    """Point the platform dirs into tmp_path, so a real ~/.config/gate never leaks in."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def full_config() -> Config:
    """Every field away from its default, so a round trip that drops one is caught."""
    return Config(
        server=ServerConfig(
            bind="[::1]:8080",
            log_level="debug",
            data_dir="/srv/gate",
            drain_timeout=2.5,
            max_body_bytes=1024,
        ),
        p2p=P2PConfig(
            port=0,
            iroh_relay_mode="custom",
            iroh_relay_urls=["https://relay.example"],
            discovery=False,
            trusted_peers=["peer-a", "peer-b"],
            heartbeat_interval=3.0,
        ),
        providers=ProvidersConfig(
            probe_local=False,
            probe_urls={"ollama": "http://10.0.0.3:11434"},
            health_interval=7.0,
            engines=[
                ProviderConfig(
                    name="box",
                    kind="vllm",
                    base_url="http://10.0.0.2:8000/v1",
                    api_key="sk-secret-1",
                    models=["llama3", "qwen"],
                    max_concurrency=4,
                ),
                ProviderConfig(name="cloud", kind="anthropic", api_key_env="ANTHROPIC_API_KEY"),
            ],
            aliases={"gpt-4": "llama3"},
        ),
        relay=RelayConfig(enabled=True, servers=["relay1"], domain="relay.example"),
        security=SecurityConfig(require_api_keys=True, control_token="tok-secret-2"),
        web=WebConfig(enabled=False),
        database=DatabaseConfig(url="sqlite:////var/lib/gate/g.db"),
    )


# --- resolution: defaults < file < env -------------------------------------------------


def test_no_file_gives_defaults_and_platform_dirs(dirs):
    config, used = load_config(env={})
    assert used is None
    assert config == Config()
    assert default_config_path() == dirs / "xdg-config" / "gate" / "gate.toml"
    assert config.data_dir == dirs / "xdg-data" / "gate"
    assert config.database_path == dirs / "xdg-data" / "gate" / "gate.db"
    assert config.bind_host_port == ("127.0.0.1", 31145)
    assert config.server.max_body_bytes == 16 * 1024 * 1024
    assert config.p2p.port == 41145
    # Each local engine is looked for where it listens by default.
    assert config.providers.probe_urls == {
        "ollama": "http://127.0.0.1:11434",
        "lmstudio": "http://127.0.0.1:1234",
        "llamacpp": "http://127.0.0.1:8080",
        "vllm": "http://127.0.0.1:8000",
    }


def test_default_file_is_read_when_present():
    path = write(default_config_path(), "[server]\nbind = '127.0.0.1:9000'\n")
    config, used = load_config(env={})
    assert used == path
    assert config.server.bind == "127.0.0.1:9000"


def test_gate_config_names_the_file(tmp_path):
    path = write(tmp_path / "elsewhere.toml", "[p2p]\nport = 5000\n")
    write(default_config_path(), "[p2p]\nport = 6000\n")
    config, used = load_config(env={"GATE_CONFIG": str(path)})
    assert (used, config.p2p.port) == (path, 5000)
    # The argument beats the variable.
    other = write(tmp_path / "arg.toml", "[p2p]\nport = 7000\n")
    config, used = load_config(other, env={"GATE_CONFIG": str(path)})
    assert (used, config.p2p.port) == (other, 7000)


def test_explicitly_named_missing_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: no such file"):
        load_config(missing, env={})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: no such file"):
        load_config(env={"GATE_CONFIG": str(missing)})
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: no such file"):
        validate_config_file(missing)


def test_missing_ok_takes_a_named_file_not_written_yet_as_none(tmp_path):
    missing = tmp_path / "nope.toml"
    for path, env in [(missing, {}), (None, {"GATE_CONFIG": str(missing)})]:
        config, used = load_config(path, env={**env, "GATE_P2P__PORT": "0"}, missing_ok=True)
        assert used is None and config.p2p.port == 0  # the defaults, and the environment
    present = write(tmp_path / "gate.toml", "[p2p]\nport = 5000\n")
    config, used = load_config(present, env={}, missing_ok=True)
    assert (used, config.p2p.port) == (present, 5000)


def test_full_file_round_trips(tmp_path):
    original = full_config()
    path = tmp_path / "gate.toml"
    write_config_atomic(path, dump_toml(original))
    loaded, used = load_config(path, env={})
    assert used == path
    assert loaded == original
    assert validate_config_file(path) == original
    assert dump_toml(loaded) == dump_toml(original)


def test_file_log_level_is_case_insensitive(tmp_path):
    path = write(tmp_path / "g.toml", "[server]\nlog_level = 'WARNING'\n")
    assert load_config(path, env={})[0].server.log_level == "warning"


ENV_FORMS = [
    ({"GATE_SERVER__BIND": "127.0.0.1:0"}, lambda c: c.bind_host_port, ("127.0.0.1", 0)),
    ({"GATE_P2P__PORT": "0"}, lambda c: (c.p2p.port, type(c.p2p.port)), (0, int)),
    ({"GATE_P2P__DISCOVERY": "false"}, lambda c: c.p2p.discovery, False),
    ({"GATE_RELAY__ENABLED": "true"}, lambda c: c.relay.enabled, True),
    ({"GATE_WEB__ENABLED": "0"}, lambda c: c.web.enabled, False),
    ({"GATE_SERVER__DRAIN_TIMEOUT": "1.5"}, lambda c: c.server.drain_timeout, 1.5),
    ({"GATE_P2P__TRUSTED_PEERS": '["a", "b"]'}, lambda c: c.p2p.trusted_peers, ["a", "b"]),
    (
        {"GATE_PROVIDERS__ENGINES": '[{"name": "local", "kind": "ollama"}]'},
        lambda c: c.providers.engines,
        [ProviderConfig(name="local", kind="ollama")],
    ),
    ({"GATE_PROVIDERS__ALIASES": '{"a": "b"}'}, lambda c: c.providers.aliases, {"a": "b"}),
    ({"GATE_PROVIDERS__PROBE_URLS": "{}"}, lambda c: c.providers.probe_urls, {}),
    (
        {"GATE_PROVIDERS__PROBE_URLS__VLLM": "http://127.0.0.1:9000"},
        lambda c: c.providers.probe_urls,
        {"vllm": "http://127.0.0.1:9000"},  # the table replaces the default one
    ),
    ({"GATE_PROVIDERS__ALIASES__GPT4": "llama"}, lambda c: c.providers.aliases, {"gpt4": "llama"}),
    # JSON only where the field is a list or a table: a string may start with [ or {.
    ({"GATE_SERVER__BIND": "[::1]:8080"}, lambda c: c.bind_host_port, ("::1", 8080)),
    ({"GATE_PROVIDERS__ALIASES__X": "[1]"}, lambda c: c.providers.aliases, {"x": "[1]"}),
    ({"GATE_SECURITY__CONTROL_TOKEN": "{t}"}, lambda c: c.security.control_token, "{t}"),
    ({"GATE_LOG": "DEBUG"}, lambda c: c.server.log_level, "debug"),
    ({"GATE_SECURITY__CONTROL_TOKEN": "123"}, lambda c: c.security.control_token, "123"),
    ({"DATABASE_URL": "sqlite:////tmp/x.db"}, lambda c: c.database_path, Path("/tmp/x.db")),
    # Variables without "__" are not config keys, and empty shortcuts count as unset.
    ({"GATE_PASSPHRASE": "x", "GATE_LOG": "", "DATABASE_URL": ""}, lambda c: c, Config()),
]


@pytest.mark.parametrize(("env", "get", "expected"), ENV_FORMS)
def test_env_forms(env, get, expected):
    config, _ = load_config(env=env)
    assert get(config) == expected


def test_env_overrides_file_key_by_key(tmp_path):
    path = write(
        tmp_path / "gate.toml",
        "[server]\nlog_level = 'warning'\nbind = '127.0.0.2:1'\n"
        "[p2p]\nport = 5000\n[providers.aliases]\nkeep = 'x'\n",
    )
    env = {
        "GATE_P2P__PORT": "6000",
        "GATE_LOG": "error",
        "GATE_SERVER__LOG_LEVEL": "debug",  # the explicit form beats the shortcut
        "GATE_PROVIDERS__ALIASES__NEW": "y",  # a deeper key lands inside the file's table
    }
    config, used = load_config(path, env=env)
    assert used == path
    assert config.p2p.port == 6000
    assert config.server.log_level == "debug"
    assert config.server.bind == "127.0.0.2:1"  # untouched by env
    assert config.providers.aliases == {"keep": "x", "new": "y"}
    # A whole value set by env replaces the file's, it does not merge.
    config, _ = load_config(path, env={"GATE_PROVIDERS__ALIASES": '{"only": "z"}'})
    assert config.providers.aliases == {"only": "z"}
    # ...and a deeper variable is applied after it, whatever the order of the mapping.
    env = {"GATE_PROVIDERS__ALIASES__B": "2", "GATE_PROVIDERS__ALIASES": '{"a": "1"}'}
    config, _ = load_config(path, env=env)
    assert config.providers.aliases == {"a": "1", "b": "2"}


# --- errors name the source, the key and the problem ------------------------------------

ENGINE = "[[providers.engines]]\nname = 'a'\nkind = 'ollama'\n"

FILE_ERRORS = [
    ("[serverr]\nbind = '1.2.3.4:5'\n", "serverr", "unknown key (valid keys: server, p2p,"),
    ("[server]\nprot = 1\n", "server.prot", "unknown key (valid keys: bind, log_level,"),
    (ENGINE + "key = 'x'\n", "providers.engines[0].key", "unknown key (valid keys: name, kind"),
    ("[[providers.engines]]\nname = 'a'\n", "providers.engines[0].kind", "required key is missing"),
    ("[p2p]\nport = 'x'\n", "p2p.port", "Expected int, got str"),
    ("[p2p]\nport = '80'\n", "p2p.port", "Expected int, got str"),  # no coercion in a file
    ("[p2p]\nport = 70000\n", "p2p.port", "Expected int <= 65535"),
    ("[p2p]\nport = -1\n", "p2p.port", "Expected int >= 0"),
    ("[p2p]\ntrusted_peers = 'a'\n", "p2p.trusted_peers", "Expected array, got str"),
    ("server = 5\n", "server", "Expected object, got int"),
    ("[server]\nlog_level = 'loud'\n", "server.log_level", "one of debug, info, warning, error"),
    ("[server]\ndrain_timeout = 0\n", "server.drain_timeout", "Expected float > 0"),
    (
        "[p2p]\niroh_relay_mode = 'on'\n",
        "p2p.iroh_relay_mode",
        "one of default, disabled, custom; got 'on'",
    ),
    ("[p2p]\niroh_relay_mode = 'custom'\n", "p2p.iroh_relay_urls", "needs at least one URL"),
    (ENGINE.replace("ollama", "gpt"), "providers.engines[0].kind", "must be one of ollama,"),
    (ENGINE + ENGINE, "providers.engines", "duplicate engine name 'a'"),
    (ENGINE + "max_concurrency = -1\n", "providers.engines[0].max_concurrency", ">= 0"),
    ("[providers.aliases]\nx = 1\n", "providers.aliases[...]", "Expected str, got int"),
    (
        "[providers.probe_urls]\nopenai = 'https://api.openai.com'\n",
        "providers.probe_urls",
        "must be one of ollama, lmstudio, llamacpp, vllm; got 'openai'",
    ),
    (
        "[providers.probe_urls]\nollama = '127.0.0.1:11434'\n",
        "providers.probe_urls",
        "ollama: expected an http:// or https:// URL, got '127.0.0.1:11434'",
    ),
    ("[providers.probe_urls]\nvllm = 'http://:8000'\n", "providers.probe_urls", "vllm: expected"),
    ("[providers.probe_urls]\nvllm = 'http://h:80000'\n", "providers.probe_urls", "vllm: expected"),
    ("[providers.probe_urls]\nvllm = 'ftp://h:8000'\n", "providers.probe_urls", "vllm: expected"),
    ("[providers]\nprobe_urls = ['http://h:1']\n", "providers.probe_urls", "Expected object"),
    ("[providers.probe_urls]\nvllm = 8000\n", "providers.probe_urls[...]", "Expected str, got int"),
    ("[server]\nbind = 'localhost'\n", "server.bind", "expected HOST:PORT"),
    ("[server]\nbind = '::1:80'\n", "server.bind", "needs brackets"),
    ("[server]\nbind = 'h:65536'\n", "server.bind", "port must be 0..65535; got 65536"),
    ("[server]\nbind = 'h:8o'\n", "server.bind", "expected HOST:PORT"),
    ("[database]\nurl = 'postgres://u:hunter2@db/g'\n", "database.url", "only sqlite"),
    ("[database]\nurl = 'sqlite://x.db'\n", "database.url", "sqlite:///relative.db"),
    ("[tls]\nacme_directory = 'letsencrypt'\n", "tls.acme_directory", "https:// URL"),
    ("[tls]\nacme_eab_kid = 'kid-1'\n", "tls.acme_eab_kid", "go together"),
    ("[tls]\nacme_eab_hmac_key = 'hunter2'\n", "tls.acme_eab_kid", "go together"),
    (
        "[tls]\nacme_eab_kid = 'k'\nacme_eab_hmac_key = 'hunter2'\nacme_eab_hmac_key_env = 'E'\n",
        "tls.acme_eab_hmac_key",
        "not both",
    ),
    ("[tls]\nacme_emial = 'a@b.c'\n", "tls.acme_emial", "unknown key"),
]


@pytest.mark.parametrize(("text", "key", "problem"), FILE_ERRORS)
def test_file_errors_name_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path / "gate.toml", text)
    for load in (lambda: load_config(path, env={}), lambda: validate_config_file(path)):
        with pytest.raises(ConfigError) as info:
            load()
        message = str(info.value)
        assert message.startswith(f"{path}: {key}: "), message
        assert problem in message
        assert "hunter2" not in message  # a database URL may hold a password


@pytest.mark.parametrize(("text", "key", "problem"), FILE_ERRORS)
def test_text_errors_name_the_file_it_is_meant_for(text, key, problem):
    with pytest.raises(ConfigError) as info:
        validate_config_text(text, "gate.toml")
    assert str(info.value).startswith(f"gate.toml: {key}: ")
    assert problem in str(info.value)


def test_text_is_checked_as_the_file_would_be(tmp_path):
    text = "[p2p]\nport = 5000\n"
    path = write(tmp_path / "gate.toml", text)
    assert validate_config_text(text, "x") == validate_config_file(path)
    assert validate_config_text("", "x") == Config()


EXPOSED = "[server]\nbind = '0.0.0.0:31145'\n"
EXPOSED_PROBLEM = "server.bind: 0.0.0.0:31145 is reachable from other machines; set "


def test_every_reading_refuses_the_api_beyond_loopback_without_keys(tmp_path):
    """What `gate serve` refuses, `config validate`, `config edit` (the text), `gate
    setup` and the RPC (file edits) refuse too: one check, in decoding."""
    path = write(tmp_path / "gate.toml", EXPOSED)
    readings = [
        lambda: validate_config_file(path),
        lambda: validate_config_text(EXPOSED, str(path)),
        lambda: load_config(path, env={}),
        lambda: edit_config_file(
            tmp_path / "new.toml", lambda d: d.update(server={"bind": "0.0.0.0:31145"}), env={}
        ),
    ]
    for read in readings:
        with pytest.raises(ConfigError) as info:
            read()
        assert str(info.value).startswith(f"{tmp_path}/")
        assert EXPOSED_PROBLEM in str(info.value)
    assert not (tmp_path / "new.toml").exists()
    # The environment is a layer too: the variable that exposes it is named.
    with pytest.raises(ConfigError, match=f"^GATE_SERVER__BIND: {EXPOSED_PROBLEM}"):
        load_config(
            tmp_path / "none.toml", env={"GATE_SERVER__BIND": "0.0.0.0:31145"}, missing_ok=True
        )
    keys = {"GATE_SECURITY__REQUIRE_API_KEYS": "true"}
    assert load_config(path, env=keys)[0].security.require_api_keys
    text = EXPOSED + "[security]\nrequire_api_keys = true\n"
    assert validate_config_text(text, "x").server.bind == "0.0.0.0:31145"


def test_bad_toml_syntax_names_file_and_line(tmp_path):
    path = write(tmp_path / "gate.toml", "[server]\nbind = \n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: invalid TOML: .*line 2"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"^/etc/g\.toml: invalid TOML: .*line 2"):
        validate_config_text("[server]\nbind = \n", "/etc/g.toml")


def test_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "dir.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: cannot read"):
        load_config(path, env={})
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"a = '\xff'\n")
    with pytest.raises(ConfigError, match=re.escape(f"{latin}: not UTF-8 text")):
        load_config(latin, env={})


ENV_ERRORS = [
    ({"GATE_P2P__PORT": "abc"}, "GATE_P2P__PORT: p2p.port: Expected int, got str"),
    ({"GATE_P2P__PORT": "99999"}, "GATE_P2P__PORT: p2p.port: Expected int <= 65535"),
    ({"GATE_WEB__ENABLED": "yes"}, "GATE_WEB__ENABLED: web.enabled: Expected bool, got str"),
    ({"GATE_SERVER__PROT": "1"}, "GATE_SERVER__PROT: server.prot: unknown key"),
    ({"GATE_NOPE__X": "1"}, "GATE_NOPE__X: unknown section 'nope' (valid sections: server,"),
    ({"GATE_SERVER____BIND": "1"}, "GATE_SERVER____BIND: malformed name"),
    ({"GATE_P2P__TRUSTED_PEERS": '["a",'}, "GATE_P2P__TRUSTED_PEERS: invalid JSON"),
    ({"GATE_P2P__TRUSTED_PEERS": "a,b"}, "GATE_P2P__TRUSTED_PEERS: p2p.trusted_peers: Expected"),
    ({"GATE_LOG": "loud"}, "GATE_LOG: server.log_level: must be one of"),
    ({"GATE_SERVER__BIND": "nope"}, "GATE_SERVER__BIND: server.bind: expected HOST:PORT"),
    ({"GATE_SERVER__BIND__X": "1"}, "GATE_SERVER__BIND__X: server.bind is not a table"),
    ({"DATABASE_URL": "postgres://u:hunter2@db/g"}, "DATABASE_URL: database.url: only sqlite"),
    (
        {"GATE_PROVIDERS__ENGINES": '[{"name": "a", "kind": "nope"}]'},
        "GATE_PROVIDERS__ENGINES: providers.engines[0].kind: must be one of",
    ),
    (
        {"GATE_PROVIDERS__PROBE_URLS__OLLAMA": "localhost:11434"},
        "GATE_PROVIDERS__PROBE_URLS__OLLAMA: providers.probe_urls: ollama: expected an http://",
    ),
    (
        {"GATE_PROVIDERS__ALIASES": "[1]"},
        "GATE_PROVIDERS__ALIASES: providers.aliases: Expected object, got array",
    ),
    (
        {"GATE_P2P__PORT": "1", "GATE_P2P__IROH_RELAY_MODE": "bad"},
        "GATE_P2P__IROH_RELAY_MODE: p2p.iroh_relay_mode: must be one of",
    ),
]


@pytest.mark.parametrize(("env", "expected"), ENV_ERRORS)
def test_env_errors_name_the_variable(tmp_path, env, expected):
    # A valid file is present: the message must blame the variable, not the file.
    path = write(tmp_path / "gate.toml", "[server]\nbind = '127.0.0.1:1'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "hunter2" not in message


# --- derived values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////tmp/x.db", Path("/tmp/x.db")),
        ("sqlite:///rel/x.db", Path("rel/x.db")),  # relative to the working directory
        ("/var/lib/gate.db", Path("/var/lib/gate.db")),
        ("~/g.db", Path.home() / "g.db"),
    ],
)
def test_database_path_forms(url, expected):
    assert Config(database=DatabaseConfig(url=url)).database_path == expected


def test_database_defaults_into_the_configured_data_dir():
    config = Config(server=ServerConfig(data_dir="~/gate-data"))
    assert config.data_dir == Path.home() / "gate-data"
    assert config.database_path == Path.home() / "gate-data" / "gate.db"


@pytest.mark.parametrize("url", ["postgres://u:p@h/db", "mysql://h/db", "sqlite://", "sqlite:///"])
def test_other_databases_are_rejected(url):
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: database\.url: "):
        load_config(env={"DATABASE_URL": url})


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("[::1]:8080", ("::1", 8080)),
        ("0.0.0.0:31145", ("0.0.0.0", 31145)),
        ("localhost:0", ("localhost", 0)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_bind_forms(bind, expected):
    assert Config(server=ServerConfig(bind=bind)).bind_host_port == expected
    assert parse_bind(bind) == expected


@pytest.mark.parametrize(
    ("bind", "problem"),
    [
        ("localhost", "expected HOST:PORT or [IPV6]:PORT, got 'localhost'"),
        (":80", "expected HOST:PORT"),
        ("h:", "expected HOST:PORT"),
        ("h:-1", "expected HOST:PORT"),
        ("::1:80", "an IPv6 host needs brackets, as in [::1]:31145; got '::1:80'"),
        ("h:70000", "port must be 0..65535; got 70000"),
    ],
)
def test_bad_binds_say_what_is_wrong(bind, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_bind(bind)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.2", False),
        ("example.com", False),
        ("[::1]", False),  # a host as parse_bind returns it: no brackets
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


# --- secrets, immutability -----------------------------------------------------------------


def test_secrets_are_masked_when_shown():
    config = full_config()
    shown = config_to_dict(config)
    assert shown["providers"]["engines"][0]["api_key"] == "***"
    assert shown["providers"]["engines"][1]["api_key"] == ""  # nothing to hide
    assert shown["security"]["control_token"] == "***"
    assert shown["providers"]["engines"][0]["base_url"] == "http://10.0.0.2:8000/v1"
    for text in (repr(config), str(config), str(shown)):
        assert "sk-secret-1" not in text and "tok-secret-2" not in text
    assert "max_concurrency=4" in repr(config)  # the rest of the repr is still there
    plain = config_to_dict(config, mask_secrets=False)
    assert plain["providers"]["engines"][0]["api_key"] == "sk-secret-1"
    assert plain["security"]["control_token"] == "tok-secret-2"
    assert "tok-secret-2" in dump_toml(config)  # the file form keeps them, to round-trip


@pytest.mark.parametrize("struct", STRUCTS)
def test_every_struct_is_frozen_and_strict(struct):
    assert struct.__struct_config__.frozen
    assert struct.__struct_config__.forbid_unknown_fields


def test_config_is_immutable():
    config = Config()
    with pytest.raises(AttributeError):
        config.server.bind = "0.0.0.0:1"


# --- atomic write ---------------------------------------------------------------------------


def test_write_is_private_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "new" / "gate.toml"  # the directory is created too
    write_config_atomic(path, "a = 1\n")
    assert path.read_text() == "a = 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["gate.toml"]
    # Replacing a world-readable file leaves it private.
    path.chmod(0o644)
    write_config_atomic(path, "a = 2\n")
    assert path.read_text() == "a = 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["gate.toml"]


@pytest.mark.parametrize(
    ("error", "raised"), [(OSError, ConfigError), (RuntimeError, RuntimeError)]
)
def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, error, raised):
    path = write(tmp_path / "gate.toml", "old = true\n")

    def crash(src, dst):
        # The new content is complete in the temp file at this point, but not yet in place.
        assert Path(src).read_text() == "new = true\n"
        raise error("crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(raised, match="crash before rename"):
        write_config_atomic(path, "new = true\n")
    assert path.read_text() == "old = true\n"
    assert os.listdir(tmp_path) == ["gate.toml"]


def test_a_killed_write_leaves_a_temp_file_that_cleanup_removes_once_stale(tmp_path):
    path = write(tmp_path / "gate.toml", "a = 1\n")
    old = write(tmp_path / ".gate.toml.k2j4_x9q.tmp", "half")
    fresh = write(tmp_path / ".gate.toml.ab12cd34.tmp", "a write under way")
    others = [
        write(tmp_path / name, "keep")
        for name in (".other.toml.k2j4_x9q.tmp", ".gate.toml.tmp", "gate.toml.ab12cd34.tmp")
    ]
    aged = time.time() - STALE_TEMP_AGE - 5
    for stale in [old, *others]:
        os.utime(stale, (aged, aged))
    assert remove_stale_temp_files(path) == [old]
    assert not old.exists() and fresh.exists() and all(p.exists() for p in others)
    assert path.read_text() == "a = 1\n"
    assert remove_stale_temp_files(tmp_path / "missing" / "gate.toml") == []


# --- editing ----------------------------------------------------------------------------


def test_edit_returns_the_config_as_it_runs_and_writes_the_file_alone(tmp_path):
    path = write(tmp_path / "gate.toml", "[server]\nmax_body_bytes = 1000\nclient_burst = 7\n")
    env = {"GATE_SERVER__MAX_BODY_BYTES": "2000", "GATE_SECURITY__CONTROL_TOKEN": "tok"}

    def edit(data):
        data["server"]["log_level"] = "debug"

    config = edit_config_file(path, edit, env=env)
    assert config == load_config(path, env=env)[0]
    assert config.server.max_body_bytes == 2000 and config.security.control_token == "tok"
    assert config.server.client_burst == 7 and config.server.max_in_flight == 512
    assert config.server.log_level == "debug"
    written = validate_config_file(path)  # the file on its own: no environment in it
    assert written.server.max_body_bytes == 1000 and written.security.control_token == ""
    # The file is checked strictly on its own before the environment is applied.
    with pytest.raises(ConfigError, match=r"server\.client_burst: Expected int, got str"):
        edit_config_file(path, lambda data: data["server"].update(client_burst="8"), env=env)


def test_edits_from_many_threads_are_all_kept(tmp_path):
    path = tmp_path / "gate.toml"
    start = threading.Barrier(20)

    def add(n: int) -> None:
        def edit(data):
            time.sleep(0.001)  # read, then write a moment later, as a busy machine does
            data.setdefault("providers", {}).setdefault("aliases", {})[f"m{n}"] = "x"

        start.wait()
        edit_config_file(path, edit, env={})

    threads = [threading.Thread(target=add, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    aliases = load_config(path, env={})[0].providers.aliases
    assert sorted(aliases) == sorted(f"m{n}" for n in range(20))


# A gate.toml as a person writes it: comments, blank lines, [[providers.engines]] blocks.
COMMENTED = """\
# Gate on my laptop
[server]
bind = "127.0.0.1:31145"  # the API, loopback only

# the engines I run
[providers]
health_interval = 30.0            # seconds between health checks

[[providers.engines]]
name = "ollama"
kind = "ollama"                   # the local one
max_concurrency = 4

[[providers.engines]]
name = "claude"
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY" # the key stays out of the file
models = ["claude-sonnet-4-5"]

[p2p]
trusted_peers = [
  "aaaa", # alice
  "bbbb", # bob
]
"""


def test_an_edit_keeps_the_files_comments_and_layout(tmp_path):
    path = write(tmp_path / "gate.toml", COMMENTED)

    def edit(data):
        data["server"]["log_level"] = "debug"
        data["providers"]["aliases"] = {"gpt-4o": "llama3.2:1b"}
        data["p2p"]["trusted_peers"] = ["bbbb", "cccc"]

    edit_config_file(path, edit, env={})
    text = path.read_text()
    # Only the edited lines changed: every comment and engine block is where it was.
    assert text == COMMENTED.replace(
        "loopback only\n", 'loopback only\nlog_level = "debug"\n'
    ).replace("health checks\n", 'health checks\naliases = {gpt-4o = "llama3.2:1b"}\n').replace(
        '  "aaaa", # alice\n', ""
    ).replace('  "bbbb", # bob\n', '  "bbbb", # bob\n  "cccc",\n')

    # An engine added and one removed: the others' blocks stay as they were written.
    def add_engine(data):
        data["providers"]["engines"].append({"name": "vllm", "kind": "vllm"})

    edit_config_file(path, add_engine, env={})
    assert '[[providers.engines]]\nname = "vllm"\nkind = "vllm"\n\n[p2p]' in path.read_text()
    edit_config_file(path, lambda data: data["providers"]["engines"].pop(0), env={})
    text = path.read_text()
    assert "# the local one" not in text and text.count("[[providers.engines]]") == 2
    assert 'api_key_env = "ANTHROPIC_API_KEY" # the key stays out of the file' in text
    assert "# Gate on my laptop" in text and "# the engines I run" in text
    assert [e.name for e in validate_config_file(path).providers.engines] == ["claude", "vllm"]


# --- renamed keys: p2p.relay_mode/relay_urls are now p2p.iroh_relay_mode/iroh_relay_urls


OLD_RELAY_KEYS = "[p2p]\nrelay_mode = 'custom'\nrelay_urls = ['https://relay.example']\n"
NEW_RELAY_KEYS = "[p2p]\niroh_relay_mode = 'custom'\niroh_relay_urls = ['https://relay.example']\n"


def deprecations(caplog):
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_old_relay_keys_in_a_file_still_load_with_a_deprecation_line(tmp_path, caplog):
    old = write(tmp_path / "old.toml", OLD_RELAY_KEYS)
    new = write(tmp_path / "new.toml", NEW_RELAY_KEYS)
    config = load_config(old, env={})[0]
    assert config == load_config(new, env={})[0]
    assert (config.p2p.iroh_relay_mode, config.p2p.iroh_relay_urls) == (
        "custom",
        ["https://relay.example"],
    )
    assert validate_config_file(old) == config
    assert validate_config_text(OLD_RELAY_KEYS, "gate.toml") == config
    # Shown by the new names only (gate config show, get_config).
    shown = config_to_dict(config)["p2p"]
    assert "iroh_relay_mode" in shown and "relay_mode" not in shown
    lines = deprecations(caplog)
    assert any(
        str(old) in line and "p2p.relay_mode" in line and "p2p.iroh_relay_mode" in line
        for line in lines
    ), lines
    assert all(
        r.levelname == "WARNING" and r.name == "gate.config"
        for r in caplog.records
        if "deprecated" in r.getMessage()
    )


def test_old_relay_env_name_still_works_with_a_deprecation_line(caplog):
    config = load_config(env={"GATE_P2P__RELAY_MODE": "disabled"})[0]
    assert config.p2p.iroh_relay_mode == "disabled"
    urls = load_config(env={"GATE_P2P__RELAY_URLS": '["https://r.example"]'})[0]
    assert urls.p2p.iroh_relay_urls == ["https://r.example"]
    lines = deprecations(caplog)
    assert any(
        "GATE_P2P__RELAY_MODE" in line and "GATE_P2P__IROH_RELAY_MODE" in line for line in lines
    ), lines


def test_new_relay_names_log_no_deprecation(tmp_path, caplog):
    path = write(tmp_path / "gate.toml", NEW_RELAY_KEYS)
    load_config(path, env={"GATE_P2P__IROH_RELAY_MODE": "disabled"})
    assert not deprecations(caplog)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (
            "[p2p]\nrelay_mode = 'disabled'\niroh_relay_mode = 'default'\n",
            {},
            "p2p.relay_mode and p2p.iroh_relay_mode are both set",
        ),
        (
            "[p2p]\nrelay_urls = ['https://a.example']\niroh_relay_urls = []\n",
            {},
            "p2p.relay_urls and p2p.iroh_relay_urls are both set",
        ),
        (
            "",
            {"GATE_P2P__RELAY_MODE": "disabled", "GATE_P2P__IROH_RELAY_MODE": "default"},
            "GATE_P2P__RELAY_MODE and GATE_P2P__IROH_RELAY_MODE are both set",
        ),
    ],
)
def test_old_and_new_relay_names_together_are_an_error_naming_both(tmp_path, text, env, expected):
    path = write(tmp_path / "gate.toml", text)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path, env=env)
    if text:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            validate_config_file(path)


def test_environment_overrides_the_file_whichever_name_each_uses(tmp_path):
    old_file = write(tmp_path / "old.toml", "[p2p]\nrelay_mode = 'default'\n")
    new_file = write(tmp_path / "new.toml", "[p2p]\niroh_relay_mode = 'default'\n")
    for path in (old_file, new_file):
        for var in ("GATE_P2P__RELAY_MODE", "GATE_P2P__IROH_RELAY_MODE"):
            config = load_config(path, env={var: "disabled"})[0]
            assert config.p2p.iroh_relay_mode == "disabled", (path, var)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("[p2p]\nrelay_mode = 'on'\n", {}, "p2p.relay_mode: must be one of"),
        ("[p2p]\nrelay_mode = 'custom'\nrelay_urls = []\n", {}, "p2p.relay_urls: iroh_relay_"),
        (
            "",
            {"GATE_P2P__PORT": "1", "GATE_P2P__RELAY_MODE": "bad"},
            "GATE_P2P__RELAY_MODE: p2p.relay_mode: must be one of",
        ),
        (  # the file's old name, overridden by the new one: the error is the variable's
            "[p2p]\nrelay_mode = 'default'\n",
            {"GATE_P2P__IROH_RELAY_MODE": "bad"},
            "GATE_P2P__IROH_RELAY_MODE: p2p.iroh_relay_mode: must be one of",
        ),
    ],
)
def test_errors_name_a_renamed_key_as_it_was_given(tmp_path, text, env, expected):
    path = write(tmp_path / "gate.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert expected in str(info.value), str(info.value)


def test_strict_decoding_still_rejects_unknown_p2p_keys(tmp_path):
    path = write(tmp_path / "gate.toml", "[p2p]\nrelay = 'disabled'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "p2p.relay: unknown key" in message
    assert "iroh_relay_mode" in message and " relay_mode" not in message


def test_an_edit_by_the_new_name_replaces_the_old_name_in_the_file(tmp_path):
    """The web UI shows the new names: its edit of a file that uses the old ones must not
    leave both (an error) but the edited value, once, under the new name."""
    path = write(tmp_path / "gate.toml", "[p2p]\nport = 7\nrelay_mode = 'default'\n")
    config = edit_config_file(path, lambda d: d["p2p"].update(iroh_relay_mode="disabled"), env={})
    assert config.p2p.iroh_relay_mode == "disabled"
    assert path.read_text() == '[p2p]\nport = 7\niroh_relay_mode = "disabled"\n'
    # An edit by the old name of a file that uses the new one: the edit's value wins too.
    config = edit_config_file(path, lambda d: d["p2p"].update(relay_mode="default"), env={})
    assert config.p2p.iroh_relay_mode == "default"
    assert path.read_text() == '[p2p]\nport = 7\niroh_relay_mode = "default"\n'
    # An edit elsewhere leaves the old name as the file gives it.
    write(path, "[p2p]\nrelay_mode = 'disabled'\n")
    edit_config_file(path, lambda d: d["p2p"].update(port=8), env={})
    assert load_config(path, env={})[0].p2p.iroh_relay_mode == "disabled"
    assert path.read_text() == "[p2p]\nrelay_mode = 'disabled'\nport = 8\n"  # as written


def test_acme_settings_default_to_lets_encrypt_and_take_the_environment(tmp_path):
    config, _ = load_config(env={})
    assert config.tls.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    path = write(tmp_path / "gate.toml", "[tls]\nacme_email = 'ops@example.com'\n")
    config, _ = load_config(
        path,
        env={
            "GATE_TLS__ACME_DIRECTORY": staging,
            "GATE_TLS__ACME_EAB_KID": "kid-1",
            "GATE_TLS__ACME_EAB_HMAC_KEY": "c2VjcmV0",
        },
    )
    assert config.tls.acme_directory == staging
    assert config.tls.acme_email == "ops@example.com"
    assert "c2VjcmV0" not in repr(config.tls)  # the HMAC key never reaches a log
    assert config_to_dict(config)["tls"]["acme_eab_hmac_key"] == "***"  # nor `config show`
