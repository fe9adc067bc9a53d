"""Which config keys change live, and how the running parts take a new config."""

import msgspec
import pytest

from gate.config import (
    LOCAL_ENGINE_URLS,
    Config,
    P2PConfig,
    ProviderConfig,
    ProvidersConfig,
    SecurityConfig,
    ServerConfig,
)
from gate.reload import LIVE_KEYS, changed_keys, merge_live
from gate.services.engines.client import UpstreamClient
from gate.services.engines.registry import Provider, ProviderRegistry
from gate.services.gateway.metrics import Metrics
from gate.services.gateway.pipeline import Gateway
from gate.services.store.usage import UsageRecorder

ENGINE = ProviderConfig(name="a", kind="llamacpp", base_url="http://127.0.0.1:9")


def with_(config: Config, section: str, **values) -> Config:
    return msgspec.structs.replace(
        config, **{section: msgspec.structs.replace(getattr(config, section), **values)}
    )


def test_changed_keys_names_each_dotted_key():
    old = Config()
    new = with_(with_(old, "server", bind="127.0.0.1:1", max_in_flight=3), "p2p", port=1)
    assert changed_keys(old, new) == {"server.bind", "server.max_in_flight", "p2p.port"}
    assert changed_keys(old, old) == set()


def test_merge_live_takes_live_keys_and_keeps_the_rest_running():
    running = Config()
    new = with_(with_(running, "server", bind="127.0.0.1:1", max_in_flight=3), "p2p", port=1)
    merged = merge_live(running, new)
    assert merged.server.max_in_flight == 3
    assert merged.server.bind == running.server.bind and merged.p2p.port == running.p2p.port
    assert "server.bind" not in LIVE_KEYS and "server.data_dir" not in LIVE_KEYS


def test_every_live_key_is_a_config_key():
    flat = {f"{s}.{k}" for s, v in msgspec.to_builtins(Config()).items() for k in v}
    assert flat >= LIVE_KEYS


def test_registry_reconfigure_keeps_unchanged_engines_and_replaces_changed_ones():
    registry = ProviderRegistry(ProvidersConfig(engines=[ENGINE]), UpstreamClient())
    (a,) = registry.providers
    a.healthy, a.in_flight = True, 2
    b = ProviderConfig(name="b", kind="vllm", base_url="http://127.0.0.1:10")
    new = registry.reconfigure(ProvidersConfig(engines=[ENGINE, b], aliases={"x": "y"}))
    assert registry.providers[0] is a and a.in_flight == 2
    assert [p.name for p in new] == ["b"] and registry.aliases == {"x": "y"}
    moved = msgspec.structs.replace(ENGINE, base_url="http://127.0.0.1:11")
    (fresh,) = registry.reconfigure(ProvidersConfig(engines=[moved]))
    assert fresh is not a and fresh.base_url == "http://127.0.0.1:11"
    assert [p.name for p in registry.providers] == ["a"]


def test_registry_reconfigure_drops_probed_engines_once_some_are_configured():
    registry = ProviderRegistry(ProvidersConfig(), UpstreamClient())
    probed = Provider(name="ollama", kind="ollama", base_url=LOCAL_ENGINE_URLS["ollama"])
    registry.providers.append(probed)
    registry.reconfigure(ProvidersConfig(aliases={"a": "b"}))
    assert [p.name for p in registry.providers] == ["ollama"]  # still probing
    registry.reconfigure(ProvidersConfig(engines=[ENGINE]))
    assert [p.name for p in registry.providers] == ["a"]


def test_registry_reconfigure_drops_probed_engines_no_longer_looked_for_there():
    registry = ProviderRegistry(ProvidersConfig(), UpstreamClient())
    probed = Provider(name="ollama", kind="ollama", base_url=LOCAL_ENGINE_URLS["ollama"])
    registry.providers.append(probed)
    registry.reconfigure(ProvidersConfig(probe_urls={"ollama": "http://127.0.0.1:11434/v1"}))
    assert registry.providers == [probed]  # the same address
    registry.reconfigure(ProvidersConfig(probe_urls={"ollama": "http://127.0.0.1:11500"}))
    assert registry.providers == []


def test_registry_reconfigure_refuses_an_unusable_engine_without_changing_anything():
    registry = ProviderRegistry(ProvidersConfig(engines=[ENGINE]), UpstreamClient())
    before = list(registry.providers)
    bad = ProviderConfig(name="c", kind="openai_compatible")  # needs a base_url
    with pytest.raises(ValueError, match="base_url"):
        registry.reconfigure(ProvidersConfig(engines=[bad]))
    assert registry.providers == before and registry.config.engines == [ENGINE]


def test_gateway_reconfigure_keeps_counts_and_unchanged_rate_buckets():
    registry = ProviderRegistry(ProvidersConfig(), UpstreamClient())
    server = ServerConfig(max_in_flight=4, client_rate_per_minute=60)
    gateway = Gateway(
        registry=registry,
        client=UpstreamClient(),
        metrics=Metrics(),
        usage=UsageRecorder(),
        api_keys=None,
        server=server,
        security=SecurityConfig(),
    )
    assert gateway.in_flight.try_enter()
    rate = gateway.rate
    gateway.reconfigure(
        msgspec.structs.replace(server, max_in_flight=1),
        SecurityConfig(require_api_keys=True),
        P2PConfig(peer_max_in_flight=2),
    )
    assert gateway.in_flight.in_flight == 1 and not gateway.in_flight.try_enter()
    assert gateway.rate is rate and gateway.security.require_api_keys
    assert gateway.peer_max_in_flight == 2
    gateway.reconfigure(
        msgspec.structs.replace(server, client_rate_per_minute=1), SecurityConfig(), P2PConfig()
    )
    assert gateway.rate is not rate and gateway.rate.rate_per_minute == 1
