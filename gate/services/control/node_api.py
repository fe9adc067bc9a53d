"""What the control plane may ask of a node: the `ControlledNode` protocol.

`gate.node.Node` implements it; the RPC (`gate.services.control.rpc`) knows the node only
through it, never through its services. Reads are snapshots; every change of
configuration goes through `edit_config`, the path a hand edit of gate.toml takes too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gate.config import Config
from gate.errors import GateError
from gate.nursery import ServiceStatistics
from gate.protocol import NodeId, PeerInfo
from gate.services.control.events import EventBus
from gate.services.store.apikeys import ApiKeyInfo
from gate.services.store.usage import UsageRecord

__all__ = ["ControlledNode", "FoundEngine", "NodeStatus", "NotStarted"]


class NotStarted(GateError):
    """The operation needs a service of the node that has not started (yet)."""


@dataclass(frozen=True)
class NodeStatus:
    """The node at one moment."""

    node_id: str
    p2p_address: str  # "" without P2P
    in_flight: int  # requests the gateway is serving
    providers: dict[str, bool]  # engine name -> healthy
    peers: dict[str, str]  # trusted peer's node id -> its state ("connected", ...)
    services: dict[str, ServiceStatistics]  # by service name
    # Each configured relay: relay_id, state (registering | registered | failed), reason
    # (why it failed), url (this node's public URL there, https://<node-id>.<domain>).
    relays: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class FoundEngine:
    """An engine looked for on this machine (`discover_providers`)."""

    kind: str
    base_url: str
    found: bool  # it answered
    models: list[str]
    configured: bool  # the node runs an engine at that address already
    error: str | None


class ControlledNode(Protocol):
    """The operations of a running node the control plane uses."""

    @property
    def node_id(self) -> NodeId: ...

    @property
    def config(self) -> Config:
        """The configuration the node runs with now."""
        ...

    @property
    def config_file(self) -> Path:
        """The gate.toml the node reads and edits (it may not exist)."""
        ...

    @property
    def log_file(self) -> Path:
        """The node's JSON log (gate.logs)."""
        ...

    @property
    def events(self) -> EventBus:
        """Live events: what GET /rpc/events streams."""
        ...

    def status(self) -> NodeStatus: ...

    def peers(self) -> list[PeerInfo]:
        """Every trusted peer (none without P2P)."""
        ...

    def peer(self, node_id: NodeId) -> PeerInfo | None:
        """A trusted peer, or None."""
        ...

    def providers(self) -> list[dict[str, object]]:
        """Each engine the node runs, described."""
        ...

    def provider(self, name: str) -> dict[str, object] | None:
        """The engine named `name`, described, or None."""
        ...

    async def test_provider(self, name: str) -> dict[str, object] | None:
        """Check the engine named `name` now; it described afterwards, or None."""
        ...

    async def discover_providers(self, urls: Sequence[str]) -> list[FoundEngine]:
        """Engines on this machine: each local kind at its providers.probe_urls address,
        and `urls`."""
        ...

    async def edit_config(
        self,
        edit: Callable[[dict[str, Any]], None],
        check: Callable[[Config], None] | None = None,
    ) -> Config:
        """Edit gate.toml's table and run with the result; see `Node.edit_config`."""
        ...

    def metrics_text(self) -> str:
        """The metrics in Prometheus' text format."""
        ...

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
        """Recorded requests, newest first; ValueError for bad bounds."""
        ...

    async def create_api_key(self, name: str) -> tuple[str, ApiKeyInfo]:
        """A new key and its record; ValueError for a bad name, NotStarted before the
        API service runs (so do the two below)."""
        ...

    async def list_api_keys(self) -> list[ApiKeyInfo]: ...

    async def revoke_api_key(self, key_id: str) -> bool:
        """Whether an active key with that id was revoked."""
        ...

    def export_identity(self, passphrase: str | None) -> bytes:
        """The node's key as PEM, encrypted with `passphrase` when given."""
        ...

    def import_identity(self, pem: bytes, *, source_passphrase: str | None, force: bool) -> NodeId:
        """Install a key as the node's identity for its next start (blocking: run it in
        a thread); IdentityError when refused."""
        ...

    def request_shutdown(self, reason: str) -> None: ...

    def request_restart(self) -> None: ...
