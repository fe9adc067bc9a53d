"""One Gate node: its config and identity, and the services the supervisor runs for it.

Start order (each waits for the ones it names in `after`):

    store -> usage -> providers -> http
                                   p2p   (non-critical: a busy UDP port leaves the node
                                          serving locally, and P2P is retried)

The store is a service rather than a resource opened around the supervisor so that it
drains last: the supervisor stops dependents before their dependencies, so the usage
writer flushes its queue after the last request ended and before the database closes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gate.config import (
    Config,
    check_exposure,
    default_config_path,
    edit_config_file,
    load_config,
    parse_bind,
)
from gate.errors import ConfigError, GateError
from gate.identity import NodeIdentity, export_identity, import_identity
from gate.logs import LOG_FILENAME
from gate.nursery import (
    Service,
    ServiceContext,
    ServiceStatistics,
    Supervisor,
    run_until_signal,
)
from gate.protocol import Capabilities, ModelInfo, NodeId, PeerInfo
from gate.reload import LIVE_KEYS, changed_keys, merge_live
from gate.services.acme.issuer import AcmeIssuer
from gate.services.control.events import EventBus, EventLogHandler
from gate.services.control.node_api import FoundEngine, NodeStatus, NotStarted
from gate.services.control.rpc import RpcService
from gate.services.control.web_ui import StaticFiles, mount_web_ui
from gate.services.engines.client import UpstreamClient
from gate.services.engines.registry import Provider, ProviderRegistry, discover_engines
from gate.services.gateway.metrics import Metrics
from gate.services.gateway.pipeline import Gateway
from gate.services.http.router import Door, with_door
from gate.services.http.server import build_app, serve_http
from gate.services.http.tls import NodeCertificate
from gate.services.p2p.relay_client import RelayClient
from gate.services.p2p.service import P2PService
from gate.services.p2p.tls_proxy import TlsDoor
from gate.services.store.apikeys import ApiKeyInfo, ApiKeys
from gate.services.store.database import Store, open_store
from gate.services.store.usage import UsageRecord, UsageRecorder, query_usage

__all__ = ["Node", "check_exposure"]

log = logging.getLogger("gate.node")


class Node:
    """A node: it implements ControlledNode, the control plane's view of it (RpcService)."""

    def __init__(
        self,
        config: Config,
        identity: NodeIdentity,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        check_exposure(config)
        self.config = config
        self.config_path = config_path
        # The environment `config` was resolved with: every later reading of the file
        # puts it on top again, as `gate serve` did.
        self.env = os.environ if env is None else env
        # The config file as last read (its stamp and contents, resolved): what the
        # watcher compares a change with, and what edit_config marks as read.
        self._file_stamp: _Stamp | None = None
        self._file_config: Config | None = None
        # Held from reading or editing the file until the result runs (edit_config and
        # the watcher), so an older reading never replaces a newer one.
        self._config_lock = trio.Lock()
        self.identity = identity
        self.node_id = NodeId(identity.public_key_bytes)
        self.client = UpstreamClient(connect_timeout=config.server.connect_timeout)
        self.metrics = Metrics()
        self.events = EventBus()
        self.usage = UsageRecorder()
        self.registry = ProviderRegistry(config.providers, self.client)
        self.gateway: Gateway | None = None
        # The relay door: relays this node registers with pass browsers' TLS to it
        # (gate.services.p2p.relay_client, tls_proxy); it needs P2P.
        self.relay_client = self._relay_client(config) if config.p2p.enabled else None
        self.relay_app = build_app(node_id=str(self.node_id), door=Door.RELAY)
        relay_door = with_door(self.relay_app, Door.RELAY)
        certificate = (
            self.relay_client.certificate
            if self.relay_client is not None
            else self._certificate(config)
            if config.tls.listen
            else None
        )
        tls_door = TlsDoor(certificate, lambda: relay_door) if certificate is not None else None
        # `tls.listen`: the relay door on a TCP port as well (no relay in between), its
        # requests marked as that door's (the usage log).
        tcp_door = with_door(self.relay_app, Door.TLS)
        self.tls_listener = (
            TlsDoor(certificate, lambda: tcp_door)
            if certificate is not None and config.tls.listen
            else None
        )
        self.p2p = (
            P2PService(
                config.p2p,
                secret_key=identity.secret_key_bytes,
                data_dir=config.data_dir,
                app=lambda: self.peer_app,
                local_capabilities=self.local_capabilities,
                events=self.events,
                relay=self.relay_client,
                tls=tls_door.serve if self.relay_client is not None and tls_door else None,
            )
            if config.p2p.enabled
            else None
        )
        # One router per door. The local door (the HTTP listener) serves everything; the
        # peer door (trusted peers' HttpProxy streams) only the routes declared for peers:
        # the API, never the control plane nor the web UI.
        self.app = build_app(
            node_id=str(self.node_id),
            registry=self.registry,
            peers=self._peer_infos if self.p2p else None,
            relays=self.relay_client.status if self.relay_client else None,
            # With keys required, only a caller with a key sees the topology.
            authorized=lambda scope: self.gateway is not None and self.gateway.authorized(scope),
        )
        self.peer_app = build_app(node_id=str(self.node_id), door=Door.PEER)
        if self.relay_client is not None and self.relay_client.acme is not None:
            acme = self.relay_client.acme
            self.metrics.register_family(
                "gate_certificate_expiry_days",
                "gauge",
                "Days until the certificate from the ACME CA for each relay name expires.",
                "domain",
                acme.days_left,
            )
            self.metrics.register_family(
                "gate_certificate_failures",
                "gauge",
                "Failed issuance or renewal attempts in a row, per relay name.",
                "domain",
                acme.failures,
            )
        self.metrics.register_counter(
            "gate_usage_dropped_total",
            "Usage records dropped because the writer fell behind.",
            lambda: float(self.usage.dropped),
        )
        self._store: Store | None = None
        self._supervisor: Supervisor | None = None
        self.restart_requested = False
        self.api_keys: ApiKeys | None = None

    def _relay_client(self, config: Config) -> RelayClient | None:
        if not (config.relay.enabled and config.relay.servers):
            return None
        certificate = self._certificate(config)
        acme = None
        if not config.tls.cert_file:  # no certificate given: one from the CA per relay domain
            try:
                acme = AcmeIssuer(config.tls, config.data_dir, certificate, self.env)
            except ValueError as exc:
                raise ConfigError(f"tls: {exc}") from None
        try:
            return RelayClient(config.relay.servers, self.node_id, certificate, acme)
        except ValueError as exc:  # a relay entry that is not NODE_ID[@host:port]
            raise ConfigError(f"relay.servers: {exc}") from None

    @staticmethod
    def _certificate(config: Config) -> NodeCertificate:
        try:
            return NodeCertificate(config.tls, config.data_dir)
        except OSError as exc:  # ssl.SSLError too: unreadable or mismatched PEM files
            raise ConfigError(f"tls: cannot load {config.tls.cert_file}: {exc}") from None

    def _peer_infos(self) -> list[PeerInfo]:
        return [peer.info() for peer in self.p2p.peers.values()] if self.p2p else []

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the store service has not started")
        return self._store

    def services(self) -> Sequence[Service]:
        services = [
            Service("store", self._run_store),
            Service("usage", self._run_usage, after=("store",)),
            Service("providers", self.registry.run, critical=False),
            Service("http", self._run_http, after=("store", "usage", "providers")),
        ]
        if self.p2p is not None:
            services.append(Service("p2p", self.p2p.run, critical=False, after=("http",)))
        if self.tls_listener is not None:
            services.append(Service("tls", self._run_tls, after=("http",)))
        services.append(Service("config-watch", self._watch_config, critical=False))
        return services

    @property
    def config_file(self) -> Path:
        """The gate.toml this node reads and edits (it may not exist)."""
        return self.config_path or default_config_path()

    def _load_file(self) -> Config:
        """The config file as it runs: defaults, the file, then this node's environment."""
        return load_config(self.config_file, self.env, missing_ok=True)[0]

    async def _watch_config(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply edits of gate.toml (by hand, `gate config edit`) within a second.

        What is safe live (gate.reload.LIVE_KEYS) applies at once; the rest is logged as
        waiting for a restart. An invalid file is refused with the error logged and the
        running configuration kept.
        """
        task_status.started()
        async with self._config_lock:
            # Compare the file with its own last reading: the running config may differ
            # from it by command-line overrides (gate serve --bind).
            self._file_stamp = _stamp(self.config_file)
            try:
                self._file_config = await trio.to_thread.run_sync(self._load_file)
            except ConfigError:
                self._file_config = self.config
        while not ctx.stopping:
            with trio.move_on_after(CONFIG_POLL_INTERVAL):
                await ctx.wait_shutdown()
            if _stamp(self.config_file) == self._file_stamp:
                continue
            async with self._config_lock:
                engines_changed = await self._reload_file()
            if engines_changed:
                await self.registry.refresh()  # outside the lock: it waits on the network

    async def _reload_file(self) -> bool:
        """Read the changed file and run with it (the config lock held); returns whether
        the engines changed."""
        stamp = _stamp(self.config_file)
        if stamp == self._file_stamp:  # edit_config wrote and applied it meanwhile
            return False
        self._file_stamp = stamp
        try:
            new = await trio.to_thread.run_sync(self._load_file)
            engines_changed = self._swap_config(merge_live(self.config, new))
        except (ConfigError, ValueError) as exc:
            log.error(
                "config change refused; keeping the running config", extra={"error": str(exc)}
            )
            return False
        self._file_read(new, stamp)
        return engines_changed

    async def edit_config(
        self,
        edit: Callable[[dict[str, Any]], None],
        check: Callable[[Config], None] | None = None,
    ) -> Config:
        """Edit gate.toml's own table with `edit` and run with the result at once (its
        live keys; the rest waits for a restart). Returns the config as it will run after
        a restart: defaults, the file, then this node's environment.

        `check` may refuse that config by raising; so does a change the running node
        cannot take. Either way nothing is written. Edits and the watcher take turns, so
        an acknowledged edit is never lost nor undone by an older reading."""

        def check_all(config: Config) -> None:
            if check is not None:
                check(config)
            self._check_runnable(merge_live(self.config, config))

        # The file as this edit wrote it, stamped before another process can write it:
        # a stamp taken later could be of that process's edit, which the watcher would
        # then take for this one and never apply.
        stamps: list[_Stamp | None] = []
        async with self._config_lock:
            config = await trio.to_thread.run_sync(
                partial(
                    edit_config_file,
                    self.config_file,
                    edit,
                    check_all,
                    env=self.env,
                    written=lambda: stamps.append(_stamp(self.config_file)),
                )
            )
            engines_changed = self._swap_config(merge_live(self.config, config))
            self._file_read(config, stamps[0])
        if engines_changed:
            await self.registry.refresh()  # outside the lock: it waits on the network
        return config

    def _check_runnable(self, config: Config) -> None:
        """Raise ConfigError for a config `_swap_config` would refuse, before it is
        written."""
        check_exposure(config)  # e.g. API keys turned off while bound beyond loopback
        for engine in config.providers.engines:
            try:
                Provider.from_config(engine)
            except ValueError as exc:
                raise ConfigError(f"providers.engines: {exc}") from None

    def _file_read(self, config: Config, stamp: _Stamp | None) -> None:
        """Log what a new reading of the file changed, and remember it."""
        changed = changed_keys(self._file_config or self.config, config)
        self._file_config, self._file_stamp = config, stamp
        if changed & LIVE_KEYS:
            log.info("config applied", extra={"keys": ",".join(sorted(changed & LIVE_KEYS))})
        if changed - LIVE_KEYS:
            log.warning(
                "config changed; restart gate serve to apply it",
                extra={"keys": ",".join(sorted(changed - LIVE_KEYS))},
            )

    def _swap_config(self, config: Config) -> bool:
        """Run with `config` from now on; it may differ from the running one only in
        gate.reload.LIVE_KEYS. Raises (changing nothing) when the change is unsafe.
        Returns whether the engines changed: the caller then checks them
        (`registry.refresh`), outside the config lock as that waits on the network."""
        check_exposure(config)  # e.g. API keys turned off while bound beyond loopback
        self.registry.reconfigure(config.providers)  # raises before it changes anything
        old, self.config = self.config, config
        self.client.connect_timeout = config.server.connect_timeout
        if self.gateway is not None:
            self.gateway.reconfigure(config.server, config.security, config.p2p)
        if self.p2p is not None:
            self.p2p.config = config.p2p
            if config.p2p.trusted_peers != old.p2p.trusted_peers:
                self.p2p.update_trusted(config.p2p.trusted_peers)
                log.info("trusted peers updated", extra={"peers": len(config.p2p.trusted_peers)})
        if config.server.log_level != old.server.log_level:
            logging.getLogger().setLevel(config.server.log_level.upper())
        return config.providers != old.providers  # check new engines, probe if now empty

    def request_shutdown(self, reason: str) -> None:
        if self._supervisor is not None:
            self._supervisor.request_shutdown(reason)

    def request_restart(self) -> None:
        """Stop gracefully; `gate serve` then starts the node again (same process id)."""
        self.restart_requested = True
        self.request_shutdown("restart requested")

    def service_statistics(self) -> dict[str, ServiceStatistics]:
        return self._supervisor.statistics() if self._supervisor else {}

    @property
    def p2p_address(self) -> str:
        return self.p2p.address if self.p2p else ""

    def local_capabilities(self) -> Capabilities:
        """What this node offers its peers: the models of its healthy engines."""
        models = sorted(
            {(m, p.name) for p in self.registry.providers if p.healthy for m in p.models}
        )
        limit = self.config.server.max_in_flight
        in_flight = self.gateway.in_flight.in_flight if self.gateway else 0
        return Capabilities(
            node_id=str(self.node_id),
            supported_models=[ModelInfo(id=m, provider=p) for m, p in models],
            supports_streaming=True,
            load_factor=min(1.0, in_flight / limit) if limit else 0.0,
        )

    def supervisor(self) -> Supervisor:
        return Supervisor(self.services(), drain_timeout=self.config.server.drain_timeout)

    async def run(
        self, *, task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until SIGINT/SIGTERM; `started` reports each service's info once all listen."""
        self._supervisor = self.supervisor()
        try:
            await run_until_signal(self._supervisor, task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.client.aclose()

    async def _run_store(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        path = self.config.database_path
        async with open_store(path) as store:
            self._store = store
            log.info("database open", extra={"path": str(path), "schema": store.schema_version})
            task_status.started(str(path))
            await ctx.wait_shutdown()
            self._store = None

    async def _run_usage(
        self, ctx: ServiceContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        jsonl = (
            self.config.data_dir / "requests.jsonl" if self.config.database.requests_jsonl else None
        )
        await self.usage.run(ctx, self.store, task_status=task_status, jsonl_path=jsonl)

    async def _run_tls(
        self,
        ctx: ServiceContext,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """`tls.listen`: HTTPS through the relay door's certificate and router."""
        assert self.tls_listener is not None
        host, port = parse_bind(self.config.tls.listen)
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        addresses = [":".join(map(str, ln.socket.getsockname()[:2])) for ln in listeners]
        log.info("TLS door listening", extra={"listen": ",".join(addresses)})
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self.tls_listener.serve_tcp, listeners)
            task_status.started(addresses)
            await ctx.wait_shutdown()
            nursery.cancel_scope.cancel()

    async def _run_http(
        self,
        ctx: ServiceContext,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        api_keys = self.api_keys = await ApiKeys.load(self.store)
        if self.config.security.require_api_keys and not api_keys.any_active:
            log.warning("API keys are required but none exists: every request will get 401")
        app = self.app
        self.gateway = Gateway(
            registry=self.registry,
            client=self.client,
            metrics=self.metrics,
            usage=self.usage,
            api_keys=api_keys,
            server=self.config.server,
            security=self.config.security,
            peers=self.p2p,
            peer_limits=self.config.p2p,
            events=self.events,
        )
        self.gateway.install(self.peer_app, door=Door.PEER)
        self.gateway.install(self.relay_app, door=Door.RELAY)
        self.gateway.install(app)
        rpc = RpcService(self)
        app.add("POST", "/rpc", rpc)
        app.add("GET", "/rpc/events", rpc.events)
        if self.config.web.enabled:  # the web UI at / and /ui/ (gate.services.control.web_ui)
            mount_web_ui(app, await trio.to_thread.run_sync(StaticFiles))
        log_events = EventLogHandler(self.events)
        logging.getLogger().addHandler(log_events)
        try:
            async with trio.open_nursery() as nursery:
                # `gate keys` may change the table from another process: pick that up.
                nursery.start_soon(_reload_keys_periodically, api_keys, ctx)
                nursery.start_soon(self._end_events_on_shutdown, ctx)
                await serve_http(
                    ctx,
                    app,
                    bind=self.config.server.bind,
                    drain_timeout=self.config.server.drain_timeout,
                    backlog=self.config.server.backlog,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()
        finally:
            logging.getLogger().removeHandler(log_events)

    # --- what the control plane asks (gate.services.control.node_api.ControlledNode) ---

    @property
    def log_file(self) -> Path:
        return self.config.data_dir / "logs" / LOG_FILENAME

    def status(self) -> NodeStatus:
        return NodeStatus(
            node_id=str(self.node_id),
            p2p_address=self.p2p_address,
            in_flight=self.gateway.in_flight.in_flight if self.gateway else 0,
            providers={p.name: p.healthy for p in self.registry.providers},
            peers={
                str(p.node_id): type(p.status).__name__.lower()
                for p in (self.p2p.peers.values() if self.p2p else [])
            },
            services=self.service_statistics(),
            relays=self.relay_client.status() if self.relay_client else [],
        )

    def peers(self) -> list[PeerInfo]:
        return self._peer_infos()

    def peer(self, node_id: NodeId) -> PeerInfo | None:
        peer = self.p2p.peer(node_id) if self.p2p else None
        return peer.info() if peer else None

    def providers(self) -> list[dict[str, object]]:
        return [p.describe() for p in self.registry.providers]

    def provider(self, name: str) -> dict[str, object] | None:
        provider = self.registry.by_name(name)
        return provider.describe() if provider else None

    async def test_provider(self, name: str) -> dict[str, object] | None:
        provider = self.registry.by_name(name)
        if provider is None:
            return None
        await self.registry.check(provider)
        return provider.describe()

    async def discover_providers(self, urls: Sequence[str]) -> list[FoundEngine]:
        configured = {p.base_url for p in self.registry.providers}
        found = await discover_engines(self.client, self.config.providers.probe_urls, urls)
        return [
            FoundEngine(
                kind=p.kind,
                base_url=p.base_url,
                found=p.healthy,
                models=sorted(p.models),
                configured=p.base_url in configured,
                error=p.last_error,
            )
            for p in found
        ]

    def metrics_text(self) -> str:
        return self.metrics.render().decode()

    async def usage_history(
        self,
        *,
        limit: int,
        offset: int,
        model: str | None,
        client: str | None,
        since: float | None,
        door: str | None = None,
    ) -> list[UsageRecord]:
        return await query_usage(
            self.store,
            limit=limit,
            offset=offset,
            model=model,
            client=client,
            since=since,
            door=door,
        )

    def _keys(self) -> ApiKeys:
        if self.api_keys is None:
            raise NotStarted("the API service has not started yet")
        return self.api_keys

    async def create_api_key(self, name: str) -> tuple[str, ApiKeyInfo]:
        return await self._keys().create(name)

    async def list_api_keys(self) -> list[ApiKeyInfo]:
        return await self._keys().list()

    async def revoke_api_key(self, key_id: str) -> bool:
        return await self._keys().revoke(key_id)

    def export_identity(self, passphrase: str | None) -> bytes:
        return export_identity(self.identity, passphrase)

    def import_identity(self, pem: bytes, *, source_passphrase: str | None, force: bool) -> NodeId:
        identity = import_identity(
            self.config.data_dir,
            pem,
            source_passphrase=source_passphrase,
            passphrase=os.environ.get("GATE_PASSPHRASE") or None,
            force=force,
        )
        return NodeId(identity.public_key_bytes)

    async def _end_events_on_shutdown(self, ctx: ServiceContext) -> None:
        """Event streams never end by themselves: close them so the drain need not wait."""
        await ctx.wait_shutdown()
        self.events.publish("node", {"state": "stopping"})
        self.events.close()


KEY_RELOAD_INTERVAL = 5.0
CONFIG_POLL_INTERVAL = 1.0


_Stamp = tuple[int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    """What changes when the file does (inode, mtime and size), or None while it is
    missing. The inode tells apart two atomic writes within one tick of the clock."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


async def _reload_keys_periodically(api_keys: ApiKeys, ctx: ServiceContext) -> None:
    while not ctx.stopping:
        await trio.sleep(KEY_RELOAD_INTERVAL)
        try:
            await api_keys.reload()
        except GateError as exc:  # a busy or broken database: keep the keys we have
            log.warning("reloading API keys failed", extra={"error": str(exc)})
