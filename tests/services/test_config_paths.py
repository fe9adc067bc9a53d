"""Every path that recomputes a running node's config resolves defaults -> file -> env,
and config writes are serialized: no acknowledged write is lost, nor reverted.

In-process: a Node that is not serving (no HTTP, no P2P endpoint) and its RpcService.
The same through a real `gate serve`: tests/e2e/test_reload.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import gate.node
from gate.cli.daemon import with_bind
from gate.config import Config, load_config, validate_config_file
from gate.identity import NodeIdentity
from gate.node import Node
from gate.nursery import ServiceContext
from gate.protocol import NodeId
from gate.services.control.rpc import (
    INVALID_PARAMS,
    AddProviderParams,
    NodeIdParams,
    NoParams,
    PeerParams,
    RpcError,
    RpcService,
    UpdateConfigParams,
)

OVERRIDE = "127.0.0.1:0"
PEER = "rabdagg7roz4mcxbih6ebefvnbhpykojhb2yqe6wami4df3x6zqa"
# The file sets max_body_bytes, and the environment sets it again: the environment wins.
ENV = {
    "GATE_SECURITY__REQUIRE_API_KEYS": "true",
    "GATE_SECURITY__CONTROL_TOKEN": "env-token",
    "GATE_SERVER__MAX_BODY_BYTES": "2000",
}


def file_text(data_dir: Path) -> str:
    return (
        f"[server]\ndata_dir = '{data_dir}'\nmax_body_bytes = 1000\nclient_burst = 7\n"
        "[providers]\nprobe_local = false\n"
        "[p2p]\nport = 0\nbind_host = '127.0.0.1'\niroh_relay_mode = 'disabled'\n"
        "discovery = false\n"
    )


def assert_layers(config: Config) -> None:
    assert config.server.max_in_flight == 512  # the default: set nowhere
    assert config.server.client_burst == 7  # the file
    assert config.server.max_body_bytes == 2000  # the environment, over the file
    assert config.security.require_api_keys is True  # the environment
    assert config.security.control_token == "env-token"  # the environment


@pytest.fixture
def path(tmp_path, monkeypatch) -> Path:
    for key in list(os.environ):
        if key.startswith("GATE_") or key == "DATABASE_URL":
            monkeypatch.delenv(key)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(gate.node, "CONFIG_POLL_INTERVAL", 0.01)
    config_path = tmp_path / "gate.toml"
    config_path.write_text(file_text(tmp_path / "data"))
    return config_path


@pytest.fixture
def node(path) -> Node:
    config, used = load_config(path)
    assert used == path
    assert_layers(config)
    config = with_bind(config, OVERRIDE)  # as `gate serve --bind` runs it
    return Node(config, NodeIdentity.generate(), config_path=path)


@pytest.fixture
def rpc(node) -> RpcService:
    return RpcService(node)


async def watch_until(
    node: Node, done: Callable[[], bool], then: Callable[[], object] = lambda: None
) -> None:
    """Start the config watcher, call `then`, and run the watcher until `done()`."""
    ctx = ServiceContext("config-watch")
    async with trio.open_nursery() as nursery:
        await nursery.start(node._watch_config, ctx)
        await trio.sleep(0.05)  # its first reading of the file is done
        then()
        while not done():  # noqa: ASYNC110
            await trio.sleep(0.01)
        ctx.shutdown.set()


async def by_update_config(rpc: RpcService, node: Node, path: Path) -> None:
    answer = await rpc.update_config(UpdateConfigParams(set={"server.log_level": "debug"}))
    assert answer["config"]["server"]["max_body_bytes"] == 2000  # the answer: as it runs
    assert node.config.server.log_level == "debug"


async def by_add_peer(rpc: RpcService, node: Node, path: Path) -> None:
    await rpc.add_peer(PeerParams(peer=PEER))
    assert node.config.p2p.trusted_peers == [PEER]  # applied before the answer
    assert [p.node_id for p in await rpc.list_peers(NoParams())] == [PEER]


async def by_remove_peer(rpc: RpcService, node: Node, path: Path) -> None:
    await rpc.add_peer(PeerParams(peer=PEER))
    assert [p.node_id for p in await rpc.list_peers(NoParams())] == [PEER]
    assert await rpc.remove_peer(NodeIdParams(node_id=PEER)) == {"removed": True}
    assert node.config.p2p.trusted_peers == []
    assert await rpc.list_peers(NoParams()) == []


async def by_add_provider(rpc: RpcService, node: Node, path: Path) -> None:
    engine = AddProviderParams(name="box", kind="llamacpp", base_url="http://127.0.0.1:9")
    added = await rpc.add_provider(engine)
    assert added["name"] == "box" and added["healthy"] is False  # nothing listens there
    assert [e.name for e in node.config.providers.engines] == ["box"]
    assert [p.name for p in node.registry.providers] == ["box"]


async def by_hand_edit(rpc: RpcService, node: Node, path: Path) -> None:
    text = path.read_text()  # noqa: ASYNC240
    text = text.replace("[server]\n", "[server]\nresponse_timeout = 9.0\n")
    await watch_until(
        node, lambda: node.config.server.response_timeout == 9.0, lambda: path.write_text(text)
    )


PATHS = [by_update_config, by_add_peer, by_remove_peer, by_add_provider, by_hand_edit]


@pytest.mark.parametrize("change", PATHS, ids=lambda f: f.__name__)
async def test_each_path_runs_defaults_then_file_then_environment(
    change: Callable[[RpcService, Node, Path], Awaitable[None]], rpc, node, path
):
    with trio.fail_after(20):
        await change(rpc, node, path)
    assert_layers(node.config)
    assert node.config.server.bind == OVERRIDE  # the command line's override stays
    # The environment stays out of the file, which still validates on its own.
    assert "env-token" not in path.read_text() and "2000" not in path.read_text()
    assert validate_config_file(path).server.max_body_bytes == 1000
    # The watcher's next look at the file changes nothing.
    before = node.config
    with trio.fail_after(10):
        await watch_until(node, lambda: node._file_stamp is not None)
        await trio.sleep(0.05)
    assert node.config == before


async def test_twenty_concurrent_add_peer_are_all_kept(rpc, node, path):
    peers = sorted(str(NodeId(NodeIdentity.generate().public_key_bytes)) for _ in range(20))
    answers: list[dict[str, str]] = []

    async def add(peer: str) -> None:
        answers.append(await rpc.add_peer(PeerParams(peer=peer)))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(add, peer)
    assert sorted(a["trusted"] for a in answers) == peers
    assert sorted(load_config(path)[0].p2p.trusted_peers) == peers
    assert sorted(p.node_id for p in await rpc.list_peers(NoParams())) == peers


async def test_concurrent_update_config_last_acknowledged_wins_and_the_watcher_keeps_it(
    rpc, node, path
):
    acknowledged: list[int] = []

    async def update(burst: int) -> None:
        await rpc.update_config(UpdateConfigParams(set={"server.client_burst": burst}))
        acknowledged.append(burst)

    ctx = ServiceContext("config-watch")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(node._watch_config, ctx)
            async with trio.open_nursery() as updates:
                for burst in range(10, 30):
                    updates.start_soon(update, burst)
            last = acknowledged[-1]
            assert load_config(path)[0].server.client_burst == last
            assert node.config.server.client_burst == last
            await trio.sleep(0.3)  # the watcher looks every 10 ms meanwhile
            assert node.config.server.client_burst == last
            ctx.shutdown.set()
    assert len(acknowledged) == 20


ADD_PEER = """\
import sys
from pathlib import Path
from gate.peers_config import add_trusted_peer
add_trusted_peer(Path(sys.argv[1]), sys.argv[2])
"""


async def test_another_process_editing_right_after_the_node_is_applied_too(
    rpc, node, path, monkeypatch
):
    """`gate peers add` in another process (say, one that found no daemon at its
    address) writes the file just after the node's own edit: the node stamped the file
    as its edit left it, so the watcher sees the other edit and applies it."""
    other = str(NodeId(NodeIdentity.generate().public_key_bytes))
    real = gate.node.edit_config_file

    def then_another_process(*args: object, **kwargs: object) -> Config:
        config = real(*args, **kwargs)  # type: ignore[arg-type]
        subprocess.run([sys.executable, "-c", ADD_PEER, str(path), other], check=True, timeout=60)
        return config

    monkeypatch.setattr(gate.node, "edit_config_file", then_another_process)
    both = sorted([PEER, other])
    ctx = ServiceContext("config-watch")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(node._watch_config, ctx)
            await rpc.add_peer(PeerParams(peer=PEER))
            while sorted(node.config.p2p.trusted_peers) != both:  # noqa: ASYNC110
                await trio.sleep(0.01)
            ctx.shutdown.set()
    assert sorted(load_config(path)[0].p2p.trusted_peers) == both
    assert sorted(p.node_id for p in await rpc.list_peers(NoParams())) == both


@pytest.mark.parametrize("whose", ["own", "all-a", "own-hex@address"])
async def test_add_peer_refuses_this_node_and_ids_no_node_can_have(rpc, node, path, whose):
    own = str(node.node_id)
    peer = {"own": own, "all-a": "a" * 52, "own-hex@address": f"{node.node_id.hex()}@1.2.3.4:5"}
    before = path.read_text()
    with pytest.raises(RpcError) as info:
        await rpc.add_peer(PeerParams(peer=peer[whose]))
    assert info.value.code == INVALID_PARAMS
    expected = (
        "a point of small order, which no node's key can be"
        if whose == "all-a"
        else f"{own} is this node's own id: a node does not trust itself"
    )
    assert info.value.message.endswith(expected)
    assert path.read_text() == before and await rpc.list_peers(NoParams()) == []


async def test_a_hand_edited_entry_naming_this_node_is_ignored(node, path):
    bad = ["a" * 52, str(node.node_id), PEER]
    await node.edit_config(lambda data: data["p2p"].update(trusted_peers=bad))
    assert node.config.p2p.trusted_peers == bad  # the file says what it says...
    assert node.p2p is not None
    assert [str(n) for n in node.p2p.peers] == [PEER]  # ...the node trusts only a node
