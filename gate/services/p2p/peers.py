"""The peers this node trusts: each one's state (`PeerState`), the trust list from
`p2p.trusted_peers` (`TrustedPeers`), and what is remembered of them between runs in
peers.json (`PeersCache`).

Trust is this node's own decision (spec §5.4): a peer is trusted while its NodeId is in
the configured list. The addresses a peer was last reached at are remembered, so an
entry without addresses can still be dialed after a restart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from gate.identity import write_secret_file_atomic
from gate.peers_config import parse_peer_spec
from gate.protocol import Capabilities, Connected, ConnectionStatus, Disconnected, NodeId, PeerInfo
from gate.services.transport.quic import Connection

__all__ = ["PEERS_CACHE", "PeerState", "PeersCache", "TrustedPeers"]

log = logging.getLogger("gate.p2p")

PEERS_CACHE: Final = "peers.json"


@dataclass(eq=False)
class PeerState:
    node_id: NodeId
    addresses: list[str] = field(default_factory=list)
    status: ConnectionStatus = field(default_factory=Disconnected)
    capabilities: Capabilities | None = None
    last_seen_ms: int | None = None
    connection: Connection | None = None
    in_flight: int = 0

    @property
    def connected(self) -> bool:
        return isinstance(self.status, Connected) and self.connection is not None

    @property
    def load(self) -> float:
        return self.capabilities.load_factor if self.capabilities else 1.0

    def models(self) -> set[str]:
        if self.capabilities is None:
            return set()
        return {m.id for m in self.capabilities.supported_models}

    def info(self) -> PeerInfo:
        return PeerInfo(
            node_id=str(self.node_id),
            addresses=list(self.addresses),
            status=self.status,
            last_seen_ms=self.last_seen_ms,
            capabilities=self.capabilities,
        )


class PeersCache:
    """peers.json in the data directory: each peer's PeerInfo by NodeId, written
    atomically (and privately) whenever a peer connects."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / PEERS_CACHE

    def load(self) -> dict[str, Any]:
        """What was saved, or {} when there is nothing (readable) to load."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, peers: Iterable[PeerState]) -> None:
        data = {str(p.node_id): msgspec.to_builtins(p.info()) for p in peers}
        try:
            write_secret_file_atomic(self.path, json.dumps(data, indent=2).encode())
        except OSError as exc:
            log.warning("cannot write peers cache", extra={"error": str(exc)})


class TrustedPeers:
    """The trusted peers by NodeId (`by_id`, one dict for the node's lifetime), built from
    `p2p.trusted_peers` entries with what peers.json remembers."""

    def __init__(self, specs: Iterable[str], cache: PeersCache, own: NodeId | None = None) -> None:
        """`own`: this node's id, which an entry may name (a hand edit) but never trusts."""
        self.cache = cache
        self.own = own
        self.by_id: dict[NodeId, PeerState] = {}
        remembered = cache.load()
        for spec in specs:
            self._trust(spec, remembered)

    def _parse(self, spec: str) -> tuple[NodeId, list[str]] | None:
        """The entry's node and addresses; None (logged) for one that cannot be trusted."""
        try:
            node_id, addrs = parse_peer_spec(spec)
        except ValueError as exc:
            log.warning("ignoring trusted peer entry", extra={"entry": spec, "error": str(exc)})
            return None
        if node_id == self.own:  # it would dial itself every few seconds, in vain
            log.warning("ignoring trusted peer entry: it is this node", extra={"entry": spec})
            return None
        return node_id, addrs

    def _trust(self, spec: str, remembered: dict[str, Any] | None = None) -> PeerState | None:
        parsed = self._parse(spec)
        if parsed is None:
            return None
        node_id, addrs = parsed
        peer = self.by_id.get(node_id) or PeerState(node_id)
        cached = (remembered or {}).get(str(node_id), {})
        peer.addresses = addrs or list(cached.get("addresses", [])) or peer.addresses
        peer.last_seen_ms = peer.last_seen_ms or cached.get("last_seen_ms")
        self.by_id[node_id] = peer
        return peer

    def trusted(self, node_id: NodeId) -> bool:
        return node_id in self.by_id

    def get(self, node_id: NodeId) -> PeerState | None:
        return self.by_id.get(node_id)

    def update(self, specs: Iterable[str]) -> tuple[list[NodeId], list[PeerState]]:
        """Apply a new trusted_peers list: (the peers no longer trusted, the newly
        trusted ones). Peers still trusted take the entry's addresses, if it has any."""
        wanted: dict[NodeId, str] = {}
        for spec in specs:
            if (parsed := self._parse(spec)) is not None:
                wanted[parsed[0]] = spec
        dropped = [node_id for node_id in self.by_id if node_id not in wanted]
        for node_id in dropped:
            log.info("peer no longer trusted", extra={"peer": str(node_id)})
            self.by_id.pop(node_id)
        added: list[PeerState] = []
        for node_id, spec in wanted.items():
            new = node_id not in self.by_id
            peer = self._trust(spec)
            if new and peer is not None:
                added.append(peer)
        return dropped, added

    def save(self) -> None:
        self.cache.save(self.by_id.values())

    def serving(self, model: str) -> list[PeerState]:
        """Connected peers that advertise `model`, lowest load_factor first."""
        found = [p for p in self.by_id.values() if p.connected and model in p.models()]
        return sorted(found, key=lambda p: (p.load, p.in_flight))

    def models(self) -> dict[str, list[str]]:
        """Each model a connected peer advertises, with its owners as `peer:<node id>`."""
        models: dict[str, list[str]] = {}
        for peer in self.by_id.values():
            if peer.connected:
                for model in peer.models():
                    models.setdefault(model, []).append(f"peer:{peer.node_id}")
        return models
