"""The relay's DNS for ACME DNS-01, end to end: `gate relay serve` as its own process with
the challtestsrv backend, a real pebble-challtestsrv on loopback random ports, and a node
that speaks RelayControl over its own iroh connection (this test, with a node key of its
own: the node's ACME client is another part). Each record is checked by a DNS query to
challtestsrv's DNS port, as a CA would ask. Then the Cloudflare backend, against a
scripted stand-in of its API (no real Cloudflare here): its token checked at start, and
what a crash left removed at the next start."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from gate.identity import NodeIdentity
from gate.protocol import (
    ActivateDomain,
    DnsChallenge,
    DnsChallengeResponse,
    DomainRequest,
    DomainResponse,
    ErrorCode,
    NodeId,
    RelayError,
    Role,
    StreamType,
    encode_preamble,
)
from gate.services.relay.control_stream import RelayControlStream
from gate.services.transport.quic import Connection, bind_endpoint
from tests.pebble.challtestsrv import Challtestsrv
from tests.services.cloudflare_api import TOKEN, ZONE, FakeCloudflare

from .gate_process import GateServe, p2p_address, relay_env, relay_serve, run_gate, wait_for
from .test_relay_ops import samples, status_url

pytestmark = pytest.mark.e2e

DOMAIN = "relay.test"
VALUES = [c * 43 for c in "ABCDEFGH"]


@pytest.fixture
def challtestsrv():
    with Challtestsrv() as server:
        yield server


def dns_relay_env(gate_env, tmp_path, challtestsrv: Challtestsrv | None) -> dict[str, str]:
    return {
        **relay_env(gate_env, DOMAIN, tmp_path / "relay-data"),
        "GATE_RELAYD_DNS__BACKEND": "challtestsrv",
        "GATE_RELAYD_DNS__URL": challtestsrv.url if challtestsrv else "",
        "GATE_RELAYD_DNS__CHALLENGES_PER_MINUTE": "3",
    }


@pytest.fixture
def relay(gate_env, tmp_path, challtestsrv):
    relay = relay_serve(dns_relay_env(gate_env, tmp_path, challtestsrv)).start()
    try:
        yield relay
    finally:
        relay.close()


def relay_address(relay: GateServe) -> tuple[NodeId, str]:
    relay_id, _, addr = p2p_address(relay).partition("@")
    return NodeId.parse(relay_id), addr


class Node:
    """A node's side of RelayControl: its key, its connection to the relay, a stream."""

    def __init__(self, relay: GateServe) -> None:
        self.identity = NodeIdentity.generate()
        self.node_id = NodeId(self.identity.public_key_bytes)
        self.challenge = f"_acme-challenge.{self.node_id}.{DOMAIN}"
        self._relay = relay_address(relay)
        self.conn: Connection | None = None

    async def connect(self, endpoint) -> None:
        with trio.fail_after(20):
            self.conn = await endpoint.connect(self._relay[0], [self._relay[1]])

    async def stream(self) -> RelayControlStream:
        assert self.conn is not None
        stream = await self.conn.open_stream()
        await stream.send_all(encode_preamble(StreamType.RELAY_CONTROL))
        return RelayControlStream(stream, Role.INITIATOR)


@contextlib.asynccontextmanager
async def connected(relay: GateServe) -> AsyncIterator[tuple[Node, RelayControlStream]]:
    """A new node connected to `relay`, with a RelayControl stream open; its endpoint is
    closed after, whatever happened."""
    node = Node(relay)
    endpoint = await bind_endpoint(node.identity.secret_key_bytes, host="127.0.0.1")
    try:
        await node.connect(endpoint)
        yield node, await node.stream()
    finally:
        with trio.CancelScope(shield=True):
            await endpoint.aclose()


async def ask(control: RelayControlStream, request) -> object:
    with trio.fail_after(20):
        await control.send(request)
        message = await control.receive()
    return message.payload if message else None


async def dns(server: Challtestsrv, name: str) -> list[str]:
    return sorted(await trio.to_thread.run_sync(server.txt, name))


async def records_now(status: str) -> float:
    text = await trio.to_thread.run_sync(lambda: httpx.get(f"{status}/metrics", timeout=10).text)
    return samples(text)["gate_relay_dns_records"]


async def eventually_empty(server: Challtestsrv, name: str, status: str) -> None:
    """No record at `name`, and none left on the relay's list (while challtestsrv removes
    one of several values the name is cleared and the others set again)."""
    with trio.fail_after(10):
        while await records_now(status) or await dns(server, name):  # noqa: ASYNC110
            await trio.sleep(0.1)


def test_a_nodes_own_challenge_is_published_and_nothing_else(relay, challtestsrv):
    other = NodeId(NodeIdentity.generate().public_key_bytes)
    theirs = f"_acme-challenge.{other}.{DOMAIN}"

    status = status_url(relay)  # once: it reads the rest of what the relay printed

    async def main() -> None:
        async with connected(relay) as (node, control):
            named = await ask(control, DomainRequest(node_id=str(node.node_id)))
            assert named == DomainResponse(domain=f"{node.node_id}.{DOMAIN}")

            # Its own name: published by the time ok=true arrives.
            ok = await ask(control, DnsChallenge(domain=node.challenge, txt_value=VALUES[0]))
            assert ok == DnsChallengeResponse(ok=True)
            assert await dns(challtestsrv, node.challenge) == VALUES[:1]

            # Another node's name: UNAUTHORIZED, nothing published, the stream goes on.
            refused = await ask(control, DnsChallenge(domain=theirs, txt_value=VALUES[1]))
            assert isinstance(refused, RelayError) and refused.code == ErrorCode.UNAUTHORIZED
            assert await dns(challtestsrv, theirs) == []

            # A second value at the same name is kept beside the first.
            ok = await ask(control, DnsChallenge(domain=node.challenge, txt_value=VALUES[2]))
            assert ok == DnsChallengeResponse(ok=True)
            assert await dns(challtestsrv, node.challenge) == [VALUES[0], VALUES[2]]

            # Past its rate (3 a minute here): RATE_LIMITED, nothing published.
            ok = await ask(control, DnsChallenge(domain=node.challenge, txt_value=VALUES[3]))
            assert ok == DnsChallengeResponse(ok=True)
            limited = await ask(control, DnsChallenge(domain=node.challenge, txt_value=VALUES[4]))
            assert isinstance(limited, RelayError) and limited.code == ErrorCode.RATE_LIMITED
            assert VALUES[4] not in await dns(challtestsrv, node.challenge)

            # A txt_value that is not 43 base64url characters: INVALID_MESSAGE, and the
            # relay ends that stream (spec §4.2); nothing published.
            bad = await node.stream()
            for value in ("x", VALUES[5] + "=", VALUES[5][:42] + "+"):
                refused = await ask(bad, DnsChallenge(domain=node.challenge, txt_value=value))
                assert isinstance(refused, RelayError), refused
                assert refused.code == ErrorCode.INVALID_MESSAGE
                with trio.fail_after(10):
                    assert await bad.receive() is None  # the relay finished the stream
                bad = await node.stream()
            assert len(await dns(challtestsrv, node.challenge)) == 3

            # The node's connection ends: its records go.
            node.conn.close()
            await eventually_empty(challtestsrv, node.challenge, status)

    trio.run(main)
    metrics = samples(httpx.get(f"{status}/metrics", timeout=10).text)
    assert metrics['gate_relay_dns_challenges_total{outcome="published"}'] == 3
    assert metrics['gate_relay_dns_challenges_total{outcome="refused"}'] == 1
    assert metrics['gate_relay_dns_challenges_total{outcome="rate_limited"}'] == 1
    assert metrics['gate_relay_dns_challenges_total{outcome="failed"}'] == 0
    assert metrics["gate_relay_dns_backend_errors_total"] == 0
    assert metrics["gate_relay_dns_records"] == 0
    assert metrics["gate_relay_dns_records_removed_total"] == 3
    health = httpx.get(f"{status}/health", timeout=10).json()
    assert health["dns"]["backend"] == "challtestsrv"


def test_records_go_at_activation_and_at_a_clean_stop(relay, challtestsrv):
    status = status_url(relay)

    async def main() -> None:
        first, second = Node(relay), Node(relay)
        endpoints = [
            await bind_endpoint(n.identity.secret_key_bytes, host="127.0.0.1")
            for n in (first, second)
        ]
        try:
            for node, endpoint in zip((first, second), endpoints, strict=True):
                await node.connect(endpoint)
                control = await node.stream()
                ok = await ask(control, DnsChallenge(domain=node.challenge, txt_value=VALUES[0]))
                assert ok == DnsChallengeResponse(ok=True)
                assert await dns(challtestsrv, node.challenge) == VALUES[:1]
                if node is first:  # its certificate issued: it activates its name
                    await ask(control, ActivateDomain(domain=f"{node.node_id}.{DOMAIN}"))
                    await eventually_empty(challtestsrv, node.challenge, status)
            assert await dns(challtestsrv, second.challenge) == VALUES[:1]
            # A clean stop (SIGTERM) removes what is left, the node still connected.
            relay.signal()
            assert await trio.to_thread.run_sync(relay.wait) == 0
            assert await dns(challtestsrv, second.challenge) == []
        finally:
            with trio.CancelScope(shield=True):
                for endpoint in endpoints:
                    await endpoint.aclose()

    trio.run(main)


@pytest.fixture
def cloudflare():
    with FakeCloudflare() as fake:
        yield fake


def cloudflare_env(gate_env, tmp_path, cloudflare) -> dict[str, str]:
    env = dns_relay_env(gate_env, tmp_path, None)
    env.update(
        {
            "GATE_RELAYD_DNS__BACKEND": "cloudflare",
            "GATE_RELAYD_DNS__ZONE_ID": ZONE,
            "GATE_RELAYD_DNS__API_TOKEN_ENV": "RELAY_TEST_CF_TOKEN",
            "GATE_RELAYD_DNS__API_BASE": cloudflare.api_base,
        }
    )
    del env["GATE_RELAYD_DNS__URL"]
    return env


def test_cloudflare_without_its_token_is_an_error_at_start(gate_env, tmp_path, cloudflare):
    result = run_gate("relay", "serve", env=cloudflare_env(gate_env, tmp_path, cloudflare))
    assert result.returncode != 0
    assert b"RELAY_TEST_CF_TOKEN is not set" in result.stderr
    assert cloudflare.requests == []


def test_cloudflare_records_a_crash_left_are_removed_at_the_next_start(
    gate_env, tmp_path, cloudflare
):
    """Through Cloudflare's API (a scripted loopback stand-in: no real Cloudflare here):
    a node's challenge is created with this relay's comment; the relay is killed
    (SIGKILL: no clean stop), and the record stays; the relay started again finds it by
    its comment and deletes it, and leaves another relay's record alone."""
    env = {**cloudflare_env(gate_env, tmp_path, cloudflare), "RELAY_TEST_CF_TOKEN": TOKEN}
    others = {"id": "f" * 32, "name": "_acme-challenge.x.relay.test", "type": "TXT"}
    cloudflare.records[others["id"]] = {**others, "content": VALUES[7], "comment": "gate relay b"}
    relay = relay_serve(env).start()
    try:

        async def publish() -> str:
            async with connected(relay) as (node, control):
                ok = await ask(control, DnsChallenge(domain=node.challenge, txt_value=VALUES[0]))
                assert ok == DnsChallengeResponse(ok=True)
                relay.proc.kill()  # a crash, the node still connected
                relay.wait()
                return node.challenge

        name = trio.run(publish)
    finally:
        relay.close()
    (record,) = [r for r in cloudflare.records.values() if r["name"] == name]
    assert (record["content"], record["comment"]) == (VALUES[0], f"gate relay {relay.node_id}")

    again = relay_serve(env).start()
    try:
        wait_for(lambda: list(cloudflare.records) == [others["id"]], "the leftover deleted")
    finally:
        again.close()


def test_a_record_goes_after_record_lifetime_with_its_node_still_connected(
    gate_env, tmp_path, challtestsrv
):
    env = {
        **dns_relay_env(gate_env, tmp_path, challtestsrv),
        "GATE_RELAYD_DNS__RECORD_LIFETIME": "1",
    }
    relay = relay_serve(env).start()
    try:
        status = status_url(relay)

        async def main() -> None:
            async with connected(relay) as (node, control):
                ok = await ask(control, DnsChallenge(domain=node.challenge, txt_value=VALUES[0]))
                assert ok == DnsChallengeResponse(ok=True)
                published = trio.current_time()
                assert await dns(challtestsrv, node.challenge) == VALUES[:1]
                await eventually_empty(challtestsrv, node.challenge, status)
                assert trio.current_time() - published >= 0.9
                assert not node.conn.is_closed  # gone by its lifetime, not a disconnect

        trio.run(main)
    finally:
        relay.close()
