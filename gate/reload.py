"""Which config changes a running node can take without a restart.

A change is a set of dotted keys (``section.key``) whose values differ. The keys in
`LIVE_KEYS` only steer how requests are handled from now on (limits, timeouts, engines,
peers, log level), so the node swaps them in at once. Everything else decides what the
node *is* or where it listens (identity and data dir, ports and binds, the database,
relays): those wait for a restart, and the running node keeps its old values for them
until then, so the node never runs half of a change it cannot make.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gate.config import Config

__all__ = ["LIVE_KEYS", "changed_keys", "merge_live"]

LIVE_KEYS: Final = frozenset(
    {
        "server.log_level",
        "server.max_body_bytes",
        "server.max_in_flight",
        "server.client_rate_per_minute",
        "server.client_burst",
        "server.response_timeout",
        "server.stream_idle_timeout",
        "server.stream_keepalive",
        "server.connect_timeout",
        "server.body_timeout",
        "p2p.trusted_peers",
        "p2p.heartbeat_interval",
        "p2p.peer_max_in_flight",
        "p2p.peer_rate_per_minute",
        "p2p.peer_burst",
        "providers.probe_local",
        "providers.probe_urls",
        "providers.health_interval",
        "providers.engines",
        "providers.aliases",
        "security.require_api_keys",
        "security.control_token",
    }
)


def changed_keys(old: Config, new: Config) -> set[str]:
    """The dotted keys whose values differ between two configs."""
    before, after = _flat(old), _flat(new)
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


def merge_live(running: Config, new: Config) -> Config:
    """`running` with every live key taken from `new`; the other keys stay as they run."""
    sections: dict[str, Any] = {}
    for key in changed_keys(running, new) & LIVE_KEYS:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
    return msgspec.structs.replace(
        running,
        **{
            section: msgspec.structs.replace(getattr(running, section), **values)
            for section, values in sections.items()
        },
    )


def _flat(config: Config) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, values in msgspec.to_builtins(config).items()
        for key, value in values.items()
    }
