"""Engines Gate forwards to: what each kind needs, which models it serves, whether it is up.

A `Provider` is one configured (or discovered) engine. `ProviderRegistry` keeps their
model lists and health current: it checks every provider at start and then every
`providers.health_interval` seconds, so an engine that goes down stops receiving
requests and one that comes back is used again, without a restart. With no engine
configured and `providers.probe_local` on, each local kind is looked for at its
`providers.probe_urls` address (by default the port it listens on) at every check, and
the engines that answer are used.

Model discovery per kind: Ollama lists models at /api/tags; every other kind speaks
OpenAI's GET /v1/models (Anthropic's own /v1/models has a different body, handled
below). Models named in the config are served even when discovery lists nothing
(cloud keys that cannot list, engines that load models on demand).
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import msgspec
import trio

from gate.config import LOCAL_ENGINE_URLS, ProviderConfig, ProvidersConfig
from gate.nursery import ServiceContext
from gate.services.engines.client import UpstreamClient, UpstreamError

__all__ = [
    "KINDS",
    "Dialect",
    "Kind",
    "Provider",
    "ProviderRegistry",
    "discover_engines",
    "strip_v1",
]

log = logging.getLogger("gate.providers")

ANTHROPIC_VERSION: Final = b"2023-06-01"
_CHECK_TIMEOUT: Final = 3.0


class Dialect(enum.Enum):
    """The API an engine speaks natively."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@dataclass(frozen=True)
class Kind:
    default_url: str | None
    dialect: Dialect
    models_path: str


KINDS: Final[dict[str, Kind]] = {
    "ollama": Kind(LOCAL_ENGINE_URLS["ollama"], Dialect.OPENAI, "/api/tags"),
    "lmstudio": Kind(LOCAL_ENGINE_URLS["lmstudio"], Dialect.OPENAI, "/v1/models"),
    "llamacpp": Kind(LOCAL_ENGINE_URLS["llamacpp"], Dialect.OPENAI, "/v1/models"),
    "vllm": Kind(LOCAL_ENGINE_URLS["vllm"], Dialect.OPENAI, "/v1/models"),
    "openai_compatible": Kind(None, Dialect.OPENAI, "/v1/models"),
    "openai": Kind("https://api.openai.com", Dialect.OPENAI, "/v1/models"),
    "anthropic": Kind("https://api.anthropic.com", Dialect.ANTHROPIC, "/v1/models"),
}
# Environment variables the cloud kinds read a key from when the config names none.
_DEFAULT_KEY_ENV: Final = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class _ModelList(msgspec.Struct):
    data: list[_ModelId] = []  # OpenAI and Anthropic
    models: list[_OllamaModel] = []  # Ollama /api/tags


class _ModelId(msgspec.Struct):
    id: str


class _OllamaModel(msgspec.Struct):
    name: str


_decode_models = msgspec.json.Decoder(_ModelList).decode


@dataclass(eq=False)
class Provider:
    name: str
    kind: str
    base_url: str  # origin (and path prefix), without a trailing /v1
    api_key: str = ""
    configured_models: tuple[str, ...] = ()
    max_concurrency: int = 0  # 0: unlimited
    discovered_models: frozenset[str] = frozenset()
    healthy: bool = False
    last_error: str | None = None
    last_check: float | None = None  # unix time
    in_flight: int = 0
    auth_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    config: ProviderConfig | None = None  # the entry it came from; None when probed
    missing_key_env: str = ""  # the variable its key should come from, which is unset

    def __post_init__(self) -> None:
        self.base_url = strip_v1(self.base_url)
        self.auth_headers = self._make_auth_headers()

    @classmethod
    def from_config(cls, config: ProviderConfig, env: dict[str, str] | None = None) -> Provider:
        env = dict(os.environ) if env is None else env
        kind = KINDS[config.kind]
        base_url = config.base_url or kind.default_url
        if not base_url:
            raise ValueError(f"provider {config.name!r}: kind {config.kind!r} needs a base_url")
        key_env = config.api_key_env or _DEFAULT_KEY_ENV.get(config.kind, "")
        api_key = config.api_key or (env.get(key_env, "") if key_env else "")
        return cls(
            missing_key_env=key_env if key_env and not api_key else "",
            name=config.name,
            kind=config.kind,
            base_url=base_url,
            api_key=api_key,
            configured_models=tuple(config.models),
            max_concurrency=config.max_concurrency,
            config=config,
        )

    @property
    def dialect(self) -> Dialect:
        return KINDS[self.kind].dialect

    @property
    def models(self) -> frozenset[str]:
        return self.discovered_models | frozenset(self.configured_models)

    @property
    def load(self) -> float:
        """In-flight requests relative to capacity; the router prefers the lowest."""
        if self.max_concurrency:
            return self.in_flight / self.max_concurrency
        return float(self.in_flight)

    @property
    def full(self) -> bool:
        return bool(self.max_concurrency) and self.in_flight >= self.max_concurrency

    def url(self, path: str) -> str:
        return self.base_url + path

    def _make_auth_headers(self) -> list[tuple[bytes, bytes]]:
        if self.dialect is Dialect.ANTHROPIC:
            headers = [(b"anthropic-version", ANTHROPIC_VERSION)]
            if self.api_key:
                headers.append((b"x-api-key", self.api_key.encode()))
            return headers
        if self.api_key:
            return [(b"authorization", b"Bearer " + self.api_key.encode())]
        return []

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "base_url": self.base_url,
            "dialect": self.dialect.value,
            "healthy": self.healthy,
            "models": sorted(self.models),
            "in_flight": self.in_flight,
            "max_concurrency": self.max_concurrency,
            "last_error": self.last_error,
            "last_check": self.last_check,
        }


def strip_v1(url: str) -> str:
    """A base URL as a Provider keeps it: no trailing / or /v1 (so two can be compared)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ProviderRegistry:
    """All providers of this node, with their health and models kept current."""

    def __init__(
        self, config: ProvidersConfig, client: UpstreamClient, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.client = client
        self.providers: list[Provider] = [
            Provider.from_config(engine, env) for engine in config.engines
        ]
        self.aliases: dict[str, str] = dict(config.aliases)
        _warn_missing_keys(self.providers)
        if config.engines and config.probe_local:
            _log_discovery_off()

    def reconfigure(self, config: ProvidersConfig) -> list[Provider]:
        """Take a new [providers] section; return the providers that are new (unchecked).

        An engine whose entry did not change keeps its Provider (health, models and
        in-flight count); a changed entry gets a fresh one. Requests in flight hold their
        Provider, so removing an engine never disturbs them. Engines found by probing stay
        only while probing still applies (nothing configured) and still looks where they are.
        """
        current = {p.name: p for p in self.providers if p.config is not None}
        providers, new = [], []
        for engine in config.engines:
            kept = current.get(engine.name)
            if kept is None or kept.config != engine:
                kept = Provider.from_config(engine)
                new.append(kept)
            providers.append(kept)
        was_probing = self.probing
        self.config = config
        self.aliases = dict(config.aliases)
        _warn_missing_keys(new)
        if was_probing and config.engines and config.probe_local:
            _log_discovery_off()
        if self.probing:
            still = {(kind, strip_v1(url)) for kind, url in config.probe_urls.items()}
            providers.extend(
                p for p in self.providers if p.config is None and (p.kind, p.base_url) in still
            )
        self.providers = providers
        return new

    def by_name(self, name: str) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)

    def serving(self, model: str) -> list[Provider]:
        """Providers that list `model` (after resolving aliases), healthy ones first."""
        model = self.aliases.get(model, model)
        found = [p for p in self.providers if model in p.models]
        found.sort(key=lambda p: (not p.healthy, p.load))
        return found

    def model_ids(self) -> dict[str, list[str]]:
        """Every model a client may name now (aliases included) -> the healthy providers
        serving it. An engine that failed its last check is left out until it answers
        again: a request for its models would only get a 503."""
        models: dict[str, list[str]] = {}
        for provider in self.providers:
            if not provider.healthy:
                continue
            for model in provider.models:
                models.setdefault(model, []).append(provider.name)
        for alias, target in self.aliases.items():
            if target in models:
                models.setdefault(alias, list(models[target]))
        return models

    async def check(self, provider: Provider, *, probing: bool = False) -> None:
        """Ask the engine for its models; record health. Never raises for engine faults.

        `probing`: a look for an engine that may well not exist: neither its absence nor
        its presence is news here (the Setup page looks at every visit; `probe_local` logs
        what it adds).
        """
        kind = KINDS[provider.kind]
        try:
            with trio.fail_after(_CHECK_TIMEOUT):
                async with await self.client.request(
                    "GET",
                    provider.url(kind.models_path),
                    headers=provider.auth_headers,
                    response_timeout=_CHECK_TIMEOUT,
                    read_timeout=_CHECK_TIMEOUT,
                ) as response:
                    body = await response.read(limit=8 * 1024 * 1024)
            if response.status >= 400:
                raise UpstreamError(f"HTTP {response.status} from {kind.models_path}")
            listing = _decode_models(body)
        except (UpstreamError, trio.TooSlowError, msgspec.DecodeError) as exc:
            message = str(exc) or type(exc).__name__
            if not probing and (provider.healthy or provider.last_check is None):
                log.warning(
                    "provider unavailable",
                    extra={"provider": provider.name, "url": provider.base_url, "error": message},
                )
            provider.healthy, provider.last_error = False, message
        else:
            models = frozenset(m.id for m in listing.data) | frozenset(
                m.name for m in listing.models
            )
            if not provider.healthy and not probing:
                log.info(
                    "provider available",
                    extra={"provider": provider.name, "models": len(models)},
                )
            provider.healthy, provider.last_error = True, None
            provider.discovered_models = models
        provider.last_check = time.time()

    async def check_all(
        self, providers: Iterable[Provider] | None = None, *, probing: bool = False
    ) -> None:
        async with trio.open_nursery() as nursery:
            for provider in list(self.providers if providers is None else providers):
                nursery.start_soon(partial(self.check, provider, probing=probing))

    @property
    def probing(self) -> bool:
        """With no engine configured, local engines are looked for at every check."""
        return not self.config.engines and self.config.probe_local

    async def probe_local(self) -> list[Provider]:
        """Find local engines at `probe_urls`; keep the ones that answer."""
        present = {p.kind for p in self.providers}
        candidates = [p for p in _probe_candidates(self.config.probe_urls) if p.kind not in present]
        await self.check_all(candidates, probing=True)
        found = [p for p in candidates if p.healthy]
        for provider in found:
            log.info(
                "found local engine", extra={"provider": provider.name, "url": provider.base_url}
            )
        self.providers.extend(found)
        return found

    async def run(
        self,
        ctx: ServiceContext,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The health service: first check (and probe), then `started`, then re-check forever."""
        await self.refresh()
        task_status.started([p.name for p in self.providers])
        while not ctx.stopping:
            with trio.move_on_after(self.config.health_interval):
                await ctx.wait_shutdown()
            if not ctx.stopping:
                await self.refresh()

    async def refresh(self) -> None:
        """Check every known provider and, when probing, look for new local engines."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.check_all)
            if self.probing:
                nursery.start_soon(self.probe_local)


def _warn_missing_keys(providers: Iterable[Provider]) -> None:
    """Once per configured engine: its key's variable is unset, so the engine will refuse
    Gate (or, without network, fail to resolve); said plainly rather than left to those
    errors."""
    for provider in providers:
        if provider.missing_key_env:
            log.warning(
                "provider has no API key: its variable is not set",
                extra={"provider": provider.name, "variable": provider.missing_key_env},
            )


def _log_discovery_off() -> None:
    log.info(
        "engines are configured; local engines are no longer looked for"
        " (providers.probe_local applies only without [[providers.engines]])"
    )


def _probe_candidates(probe_urls: dict[str, str]) -> list[Provider]:
    """One unchecked Provider per local kind, at the address probing looks for it."""
    return [Provider(name=kind, kind=kind, base_url=url) for kind, url in probe_urls.items()]


async def discover_engines(
    client: UpstreamClient, probe_urls: dict[str, str], extra_urls: Iterable[str] = ()
) -> list[Provider]:
    """Look for engines on this machine: every local kind at its `probe_urls` address
    (providers.probe_urls), and each of `extra_urls` (tried as Ollama, then as any
    OpenAI-compatible server).

    Returns every candidate, checked: `healthy` says whether it answered, and
    `models` what it serves. Used by `gate setup` and the `discover_providers` RPC.
    """
    registry = ProviderRegistry(ProvidersConfig(probe_local=False), client)
    candidates = _probe_candidates(probe_urls)
    extras = [
        [Provider(name=kind, kind=kind, base_url=url) for kind in ("ollama", "openai_compatible")]
        for url in extra_urls
    ]
    await registry.check_all([*candidates, *(p for pair in extras for p in pair)], probing=True)
    for pair in extras:
        # An Ollama server also answers /v1/models; call it Ollama when /api/tags works.
        candidates.append(next((p for p in pair if p.healthy), pair[-1]))
    return candidates
