"""One Gate node: its config and identity, and the services the supervisor runs for it.

Start order (each waits for the ones it names in `after`):

    store  ->  http

The store is a service rather than a resource opened around the supervisor so that it
drains last: the supervisor stops dependents (http) before their dependencies, so no
request can find the database closed under it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from gate.config import Config
from gate.identity import NodeIdentity
from gate.nursery import Service, ServiceContext, Supervisor, run_until_signal
from gate.protocol import NodeId
from gate.services.http import build_app, serve_http
from gate.services.store import Store, open_store

__all__ = ["Node"]

log = logging.getLogger("gate.node")


class Node:
    def __init__(self, config: Config, identity: NodeIdentity) -> None:
        self.config = config
        self.identity = identity
        self.node_id = NodeId(identity.public_key_bytes)
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the store service has not started")
        return self._store

    def services(self) -> Sequence[Service]:
        return [
            Service("store", self._run_store),
            Service("http", self._run_http, after=("store",)),
        ]

    def supervisor(self) -> Supervisor:
        return Supervisor(self.services(), drain_timeout=self.config.server.drain_timeout)

    async def run(
        self, *, task_status: trio.TaskStatus[dict[str, object]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until SIGINT/SIGTERM; `started` reports each service's info once all listen."""
        await run_until_signal(self.supervisor(), task_status=task_status)

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

    async def _run_http(
        self,
        ctx: ServiceContext,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        app = build_app(node_id=str(self.node_id))
        await serve_http(
            ctx,
            app,
            bind=self.config.server.bind,
            drain_timeout=self.config.server.drain_timeout,
            task_status=task_status,
        )
