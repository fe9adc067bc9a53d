"""The relay service: its iroh endpoint (where nodes register, spec §6), its TCP front
(where browsers' TLS arrives, §7.4) and the registry of names, run by the supervisor.

A node registers over a connection it opened itself, so a node behind NAT needs no open
port: the relay keeps the latest connection of each node and opens the tls_proxy
streams on it. Relay_control is the only stream type it serves (the dispatch table of
gate.services.p2p.dispatch, with one row); any node may open one, and what it may do
there is decided by its authenticated NodeId (gate.services.relay.control).

With a DNS backend (relay.toml `[dns]`), the relay publishes nodes' ACME DNS-01
challenges (gate.services.relay.dns): a node's records go when its last connection ends,
and all of them at a clean stop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial

import trio

from gate.nursery import ServiceContext
from gate.protocol import NodeId, StreamType
from gate.relay_config import DnsConfig, RelayServerConfig
from gate.services.engines.client import UpstreamClient
from gate.services.http.server import serve_http
from gate.services.p2p.dispatch import Opener, Route, StreamDispatch
from gate.services.relay.control import RelayControlServer
from gate.services.relay.dns.backend import DnsBackend
from gate.services.relay.dns.challenges import ChallengeRecords
from gate.services.relay.dns.challtestsrv import ChalltestsrvBackend
from gate.services.relay.dns.cloudflare import CloudflareBackend
from gate.services.relay.front import TlsFront
from gate.services.relay.registry import NameRegistry
from gate.services.relay.status import status_app
from gate.services.transport.quic import Connection, TransportError, bind_endpoint

__all__ = ["RelayService"]

log = logging.getLogger("gate.relay")

REGISTRY_FILE = "relay.db"
DNS_STOP_TIMEOUT = 10.0  # seconds a clean stop spends removing the records it published


def dns_backend(
    config: DnsConfig,
    client: UpstreamClient,
    relay_id: NodeId,
    env: Mapping[str, str] | None = None,
) -> DnsBackend | None:
    """The backend `[dns]` chose, or None (`backend = "none"`). The Cloudflare token is
    read from the environment here (load_relay_config checked that it is set)."""
    if config.backend == "challtestsrv":
        return ChalltestsrvBackend(config.url, client, timeout=config.api_timeout)
    if config.backend == "cloudflare":
        env = os.environ if env is None else env
        return CloudflareBackend(
            zone_id=config.zone_id,
            token=env.get(config.api_token_env, "").strip(),
            client=client,
            comment=f"gate relay {relay_id}",
            api_base=config.api_base,
            ttl=config.ttl,
            timeout=config.api_timeout,
        )
    return None


class RelayService:
    def __init__(self, config: RelayServerConfig, *, secret_key: bytes, node_id: NodeId) -> None:
        self.config = config
        self._secret_key = secret_key
        self.node_id = node_id
        self.connections: dict[NodeId, Connection] = {}
        self.front: TlsFront | None = None
        self.client = UpstreamClient(connect_timeout=config.dns.api_timeout)
        self.challenges = ChallengeRecords(
            dns_backend(config.dns, self.client, node_id),
            lifetime=config.dns.record_lifetime,
            per_minute=config.dns.challenges_per_minute,
        )

    def connection_to(self, node_id: NodeId) -> Connection | None:
        conn = self.connections.get(node_id)
        return conn if conn is not None and not conn.is_closed else None

    async def run(
        self,
        ctx: ServiceContext,
        *,
        task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        config = self.config
        path = config.data_path / REGISTRY_FILE
        registry = await trio.to_thread.run_sync(NameRegistry.open, path)
        control = RelayControlServer(config.domain, registry, self.challenges)
        dispatch = StreamDispatch(
            # Any node may register: §6.3 limits it to its own name.
            {StreamType.RELAY_CONTROL: Route(Opener.ANY_NODE, control.serve)},
            trusted=lambda _: False,
        )
        self.front = front = TlsFront(config, registry, self.connection_to)
        try:
            endpoint = await bind_endpoint(
                self._secret_key,
                port=config.p2p_port,
                host=config.p2p_bind_host,
                iroh_relay="disabled" if config.iroh_relay_mode == "disabled" else "default",
                discovery=config.discovery,
            )
        except TransportError:
            registry.close()
            raise

        async def serve_connection(conn: Connection) -> None:
            remote = conn.remote_id
            self.connections[remote] = conn  # the latest wins: the node's live one
            try:
                async with trio.open_nursery() as streams:
                    while True:
                        try:
                            stream = await conn.accept_stream()
                        except (TransportError, trio.BrokenResourceError):
                            return
                        streams.start_soon(dispatch.serve, conn, remote, stream)
            finally:
                if self.connections.get(remote) is conn:
                    del self.connections[remote]
                    self.challenges.release(remote)  # its last connection (§6.4)

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.challenges.run)
                await nursery.start(endpoint.serve, serve_connection)
                listening = await nursery.start(front.serve)
                status = status_app(
                    node_id=self.node_id,
                    domain=config.domain,
                    front=front,
                    registry=registry,
                    challenges=self.challenges,
                    connected=lambda: sum(1 for c in self.connections.values() if not c.is_closed),
                )
                status_urls = await nursery.start(
                    partial(serve_http, ctx, status, bind=config.status_bind, drain_timeout=1.0)
                )
                dialable = endpoint.direct_addresses or endpoint.addresses
                address = f"{self.node_id}@{','.join(dialable)}"
                log.info(
                    "relay listening",
                    extra={
                        "address": address,
                        "tls": ",".join(listening),
                        "names": len(registry),
                        "status": ",".join(status_urls),
                    },
                )
                task_status.started({"p2p": address, "listen": listening, "status": status_urls})
                await ctx.wait_shutdown()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(DNS_STOP_TIMEOUT):
                    await self.challenges.remove_all()
                await endpoint.aclose()
                await self.client.aclose()
            registry.close()
