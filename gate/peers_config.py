"""The trusted peers in gate.toml: the syntax of an entry (`parse_peer_spec`, which the
P2P service reads them with), and editing them, shared by `gate peers` and the RPC.

Without a daemon, `gate peers` writes the file; a daemon's config watcher applies such a
change within a second. The RPC applies the same edits through `Node.edit_config`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gate.config import edit_config_file
from gate.protocol import NodeId, key_problem

__all__ = [
    "DistrustEdit",
    "add_trusted_peer",
    "parse_peer_spec",
    "peer_entry",
    "remove_trusted_peer",
    "trust_edit",
]


def parse_peer_spec(text: str) -> tuple[NodeId, list[str]]:
    """`NODE_ID` or `NODE_ID@host:port[,host:port...]` (base32 or hex node id): a
    p2p.trusted_peers entry. Raises ValueError for anything else, and for an id that no
    node can have (not a usable Ed25519 public key: gate.protocol.key_problem)."""
    node_id, addresses = _split(text)
    _check_usable(node_id)
    return node_id, addresses


def _split(text: str) -> tuple[NodeId, list[str]]:
    """The entry's node id and addresses, read as text (the id's spelling only)."""
    node_text, _, addrs = text.strip().partition("@")
    node_id = NodeId.parse(node_text)
    return node_id, [a.strip() for a in addrs.split(",") if a.strip()]


def _check_usable(node_id: NodeId) -> None:
    if (problem := key_problem(node_id.bytes)) is not None:
        raise ValueError(f"{node_id} cannot be a node's id: {problem}")


def peer_entry(text: str, own: NodeId | None = None) -> str:
    """NODE_ID, NODE_ID@host:port[,host:port] or an iroh ticket, as a trusted_peers entry.

    Raises ValueError for anything else, for an id no node can have, and for `own` (this
    node's id: a node does not trust itself, and could not connect to itself).
    """
    try:
        node_id, addresses = _split(text)
    except ValueError:
        from gate.services.transport.quic import parse_ticket

        try:
            peer = parse_ticket(text)
        except ValueError:
            raise ValueError(f"not a node id, node_id@host:port or ticket: {text[:80]!r}") from None
        node_id, addresses = peer.node_id, list(peer.addresses)
    _check_usable(node_id)
    if node_id == own:
        raise ValueError(f"{node_id} is this node's own id: a node does not trust itself")
    return f"{node_id}@{','.join(addresses)}" if addresses else str(node_id)


def _node_of(entry: str) -> str | None:
    """The node an entry names, even one that cannot be trusted (so it can be removed)."""
    try:
        return str(_split(entry)[0])
    except ValueError:
        return None


def trust_edit(
    text: str, own: NodeId | None = None
) -> tuple[str, Callable[[dict[str, Any]], None]]:
    """The entry that trusts a peer, and the edit of gate.toml's table that adds it
    (replacing an older entry for the same node). Raises ValueError for a bad `text`
    (`peer_entry`)."""
    entry = peer_entry(text, own)
    node_id = _node_of(entry)

    def edit(data: dict[str, Any]) -> None:
        p2p = data.setdefault("p2p", {})
        peers = [p for p in p2p.get("trusted_peers", []) if _node_of(p) != node_id]
        p2p["trusted_peers"] = [*peers, entry]

    return entry, edit


class DistrustEdit:
    """The edit of gate.toml's table that stops trusting a node; `removed` says, once it
    ran, whether the node was trusted. Raises ValueError for a bad node id."""

    def __init__(self, node_id_text: str) -> None:
        self.node_id = str(NodeId.parse(node_id_text.partition("@")[0]))
        self.removed = False

    def __call__(self, data: dict[str, Any]) -> None:
        p2p = data.setdefault("p2p", {})
        before = list(p2p.get("trusted_peers", []))
        p2p["trusted_peers"] = [p for p in before if _node_of(p) != self.node_id]
        self.removed = len(p2p["trusted_peers"]) != len(before)

    def still_trusted(self, trusted_peers: list[str]) -> bool:
        """Whether `trusted_peers` (as the node runs) still names the node."""
        return any(_node_of(p) == self.node_id for p in trusted_peers)


def add_trusted_peer(path: Path, text: str, own: NodeId | None = None) -> str:
    """Trust a peer (replacing an older entry for the same node); returns the entry."""
    entry, edit = trust_edit(text, own)
    edit_config_file(path, edit)
    return entry


def remove_trusted_peer(path: Path, node_id_text: str) -> bool:
    """Stop trusting a node; False if it was not trusted."""
    edit = DistrustEdit(node_id_text)
    edit_config_file(path, edit)
    return edit.removed
