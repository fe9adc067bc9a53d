"""relay.toml, the configuration of `gate relay serve`: defaults, the file, then the
environment, decoded strictly by the same rules as gate.toml (gate.config.load_layers).

Keys are flat (`domain = "relay.example.com"`); the environment sets any of them as
``GATE_RELAYD_<KEY>`` (``GATE_RELAYD_LISTEN=0.0.0.0:8443``). The file is ``--config``,
else ``$GATE_RELAY_CONFIG``, else relay.toml beside gate.toml (a default file that does
not exist means the defaults; `domain` has none, so it must then come from the
environment).

`[dns]` is the one table: how the relay publishes nodes' ACME DNS-01 challenges
(``GATE_RELAYD_DNS__BACKEND=challtestsrv``). The Cloudflare token is never in the file:
`api_token_env` names the variable that holds it, checked here, at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final

import msgspec
import platformdirs

from gate.config import (
    IROH_RELAY_MODES,
    LOG_LEVELS,
    ConfigSchema,
    FieldError,
    Port,
    Seconds,
    default_config_path,
    load_layers,
    one_of,
    parse_bind,
)
from gate.errors import ConfigError

__all__ = [
    "DNS_BACKENDS",
    "RELAY_SCHEMA",
    "DnsConfig",
    "RelayServerConfig",
    "default_relay_config_path",
    "load_relay_config",
]

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
DNS_BACKENDS: Final = ("none", "challtestsrv", "cloudflare")
CLOUDFLARE_API: Final = "https://api.cloudflare.com/client/v4"


class DnsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # none: dns_challenge is answered ok=false (the relay publishes nothing).
    backend: str = "none"
    url: str = ""  # challtestsrv: its management API, e.g. http://127.0.0.1:8055
    zone_id: str = ""  # cloudflare: the zone that holds the relay's domain
    api_token_env: str = ""  # cloudflare: the variable holding an API token (DNS edit)
    api_base: str = CLOUDFLARE_API
    ttl: Annotated[int, msgspec.Meta(ge=30, le=86400)] = 60  # of each TXT record, seconds
    # Every record goes after this long whatever else happens (spec §6.4).
    record_lifetime: Seconds = 600.0
    # Per node: a bucket of this many dns_challenge requests, refilled over a minute.
    challenges_per_minute: PositiveInt = 6
    api_timeout: Seconds = 30.0  # one call to the backend's API

    def __post_init__(self) -> None:
        one_of("backend", self.backend, DNS_BACKENDS)
        if self.backend == "challtestsrv" and not self.url.startswith(("http://", "https://")):
            raise FieldError("url", f"challtestsrv needs its management URL, got {self.url!r}")
        if self.backend == "cloudflare":
            if not self.zone_id:
                raise FieldError("zone_id", "required with backend = cloudflare")
            if not self.api_token_env:
                raise FieldError(
                    "api_token_env",
                    "required with backend = cloudflare: the name of the environment "
                    "variable that holds the API token",
                )
            if not self.api_base.startswith(("http://", "https://")):
                raise FieldError("api_base", f"expected an http(s) URL, got {self.api_base!r}")


class RelayServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Required (checked once every layer is on: it may come from the environment alone):
    # the relay serves <node-id>.<domain>.
    domain: str = ""
    listen: str = "0.0.0.0:443"  # TCP: where browsers' TLS arrives
    p2p_port: Port = 41146  # UDP: iroh, where nodes register
    p2p_bind_host: str = "0.0.0.0"
    iroh_relay_mode: str = "default"  # iroh's relays (NAT traversal), as p2p.iroh_relay_mode
    discovery: bool = True
    status_bind: str = "127.0.0.1:31146"  # GET /health and /metrics, plain HTTP
    data_dir: str = ""  # empty: <the platform data dir>/gate/relay
    log_level: str = "info"
    # How long a ClientHello may take to arrive whole, and how long a proxied connection
    # may carry no byte in either direction (never a cap on its total time).
    hello_timeout: Seconds = 5.0
    idle_timeout: Seconds = 300.0
    connect_timeout: Seconds = 10.0  # opening the stream to the node
    # Caps on open connections: in all, to one node, from one client address. Past a
    # cap a connection is refused at once (a TLS alert, then close) and counted.
    max_connections: PositiveInt = 4096
    max_connections_per_node: PositiveInt = 1024
    max_connections_per_client: PositiveInt = 256
    dns: DnsConfig = msgspec.field(default_factory=DnsConfig)

    def __post_init__(self) -> None:
        domain = self.domain.strip().strip(".").lower()
        if domain and ("." not in domain or not all(domain.split("."))):
            raise FieldError(
                "domain", f"expected a DNS name such as relay.example.com, got {self.domain!r}"
            )
        msgspec.structs.force_setattr(self, "domain", domain)
        one_of("iroh_relay_mode", self.iroh_relay_mode, IROH_RELAY_MODES[:2])
        one_of("log_level", self.log_level.lower(), LOG_LEVELS)
        msgspec.structs.force_setattr(self, "log_level", self.log_level.lower())
        for field in ("listen", "status_bind"):
            try:
                parse_bind(getattr(self, field))
            except ValueError as exc:
                raise FieldError(field, str(exc)) from None

    @property
    def data_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        return platformdirs.user_data_path("gate") / "relay"


RELAY_SCHEMA: Final = ConfigSchema(RelayServerConfig, "GATE_RELAYD_", sectioned=False)


def default_relay_config_path() -> Path:
    return default_config_path().with_name("relay.toml")


def load_relay_config(
    path: Path | None = None, env: Mapping[str, str] | None = None
) -> RelayServerConfig:
    """The relay's config; ConfigError names the source, the key and the problem."""
    env = os.environ if env is None else env
    if path is None and env.get("GATE_RELAY_CONFIG"):
        path = Path(env["GATE_RELAY_CONFIG"])
    file = (path or default_relay_config_path()).expanduser()
    config = load_layers(RELAY_SCHEMA, file, env, missing_ok=path is None)
    assert isinstance(config, RelayServerConfig)
    if not config.domain:
        raise ConfigError(
            f"{file}: domain: required (the relay's DNS name, e.g. relay.example.com; "
            "or GATE_RELAYD_DOMAIN)"
        )
    dns = config.dns
    if dns.backend == "cloudflare" and not env.get(dns.api_token_env, "").strip():
        raise ConfigError(
            f"the environment variable {dns.api_token_env} is not set: dns.api_token_env "
            "names it as the one holding the Cloudflare API token"
        )
    return config
