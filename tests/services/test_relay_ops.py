"""The relay's operations without processes: caps on open connections (global, per
client address, per node: the next one refused with an alert and counted, a slot freed
when a connection ends) and its status, /health and /metrics, over the node's own HTTP
machinery. The node's end of each stream is in memory (FakeConnection, as in
test_relay.py); the browser is a real TCP client sending Python's real ClientHello."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from gate.relay_config import RelayServerConfig
from gate.services.http.server import serve_http
from gate.services.relay.dns.challenges import ChallengeRecords
from gate.services.relay.front import OVER_CAP_ALERT, TlsFront
from gate.services.relay.registry import NameRegistry
from gate.services.relay.status import status_app

from .test_relay import DOMAIN, FakeConnection, client_hello, new_node, node_reads_header


class StopNow:
    """A ServiceContext whose shutdown never comes (the test cancels instead)."""

    async def wait_shutdown(self) -> None:
        await trio.sleep_forever()


async def front_for(tmp_path, **caps):
    node = new_node()
    registry = NameRegistry.open(tmp_path / "relay.db")
    await registry.activate(node, f"{node}.{DOMAIN}")
    conn = FakeConnection()
    config = RelayServerConfig(domain=DOMAIN, listen="127.0.0.1:0", hello_timeout=5, **caps)
    return TlsFront(config, registry, lambda n: conn if n == node else None), conn, node, registry


async def open_routed(port: int, node, conn):
    """A client whose connection reached the node (which answered a byte of TLS)."""
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(client_hello(f"{node}.{DOMAIN}"))
    node_end = await conn.opened.receive()
    await node_reads_header(node_end)
    await node_end.send_all(b"\x16\x03\x03")
    assert await client.receive_some(10) == b"\x16\x03\x03"
    return client, node_end


async def refused(port: int, node) -> bytes:
    """What a client over a cap gets: every byte until the relay's clean close."""
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(client_hello(f"{node}.{DOMAIN}"))
    got = b""
    while chunk := await client.receive_some(100):  # a FIN: a reset would raise
        got += chunk
    await client.aclose()
    return got


async def close_routed(client, node_end) -> None:
    await client.aclose()
    await node_end.aclose()
    await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize(
    ("caps", "outcome"),
    [
        ({"max_connections": 2}, "over_cap_global"),
        ({"max_connections_per_client": 2}, "over_cap_client"),
        ({"max_connections_per_node": 2}, "over_cap_node"),
    ],
)
async def test_past_a_cap_the_next_connection_is_refused_and_counted(tmp_path, caps, outcome):
    front, conn, node, _ = await front_for(tmp_path, **caps)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(front.serve)
        port = int(addresses[0].rsplit(":", 1)[1])
        with trio.fail_after(10):
            first = await open_routed(port, node, conn)
            second = await open_routed(port, node, conn)
            assert await refused(port, node) == OVER_CAP_ALERT
            assert front.outcomes[outcome] == 1
            # A slot frees when a connection ends: the next one is routed.
            await close_routed(*first)
            third = await open_routed(port, node, conn)
            assert await refused(port, node) == OVER_CAP_ALERT
            assert front.outcomes[outcome] == 2
            await close_routed(*second)
            await close_routed(*third)
            assert front.open_connections == 0 and not front.per_client and not front.per_node
        nursery.cancel_scope.cancel()
    assert front.outcomes["routed"] == 3


async def test_status_serves_health_and_metrics(tmp_path):
    front, conn, node, registry = await front_for(tmp_path, max_connections_per_node=1)
    await registry.request(new_node(), f"{new_node()}.{DOMAIN}")  # asked, never activated
    relay_id = new_node()
    challenges = ChallengeRecords(None, lifetime=600, per_minute=6)
    challenges.refuse()
    app = status_app(
        node_id=relay_id,
        domain=DOMAIN,
        front=front,
        registry=registry,
        connected=lambda: 1,
        challenges=challenges,
    )
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(front.serve)
        port = int(addresses[0].rsplit(":", 1)[1])
        urls = await nursery.start(
            lambda task_status: serve_http(
                StopNow(), app, bind="127.0.0.1:0", drain_timeout=1, task_status=task_status
            )
        )
        with trio.fail_after(10):
            routed = await open_routed(port, node, conn)
            assert await refused(port, node) == OVER_CAP_ALERT  # over the node's cap
            bad = await trio.open_tcp_stream("127.0.0.1", port)
            await bad.send_all(b"GET / HTTP/1.1\r\n\r\n")  # not TLS
            assert await bad.receive_some(10) == b""
            await bad.aclose()
            stranger = await refused(port, new_node())  # a name nobody registered
            assert stranger.startswith(b"\x15")  # an alert
            await trio.testing.wait_all_tasks_blocked()

            async with httpx.AsyncClient(base_url=urls[0]) as http:
                health = (await http.get("/health")).json()
                response = await http.get("/metrics")
            assert health["status"] == "ok" and health["node_id"] == str(relay_id)
            assert health["domain"] == DOMAIN
            assert (health["registered_nodes"], health["connected_nodes"]) == (1, 1)
            assert health["open_connections"] == 1
            assert health["dns"] == {
                "backend": "none",
                "records": 0,
                "removed": 0,
                "backend_errors": 0,
                "published": 0,
                "refused": 1,
                "rate_limited": 0,
                "failed": 0,
            }
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            samples = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in response.text.splitlines()
                if line and not line.startswith("#")
            }
            assert samples["gate_relay_open_connections"] == 1
            assert samples['gate_relay_connections_total{outcome="over_cap_node"}'] == 1
            assert samples['gate_relay_connections_total{outcome="unknown_name"}'] == 1
            assert samples['gate_relay_connections_total{outcome="bad_client_hello"}'] == 1
            assert samples['gate_relay_connections_total{outcome="node_unreachable"}'] == 0
            assert samples['gate_relay_bad_client_hello_total{reason="not_tls"}'] == 1
            assert samples['gate_relay_bytes_total{direction="out"}'] == 3
            assert samples['gate_relay_bytes_total{direction="in"}'] > 200  # the ClientHello
            assert samples["gate_relay_registered_nodes"] == 1
            assert samples["gate_relay_connected_nodes"] == 1
            assert samples['gate_relay_dns_challenges_total{outcome="refused"}'] == 1
            assert samples['gate_relay_dns_challenges_total{outcome="published"}'] == 0
            assert samples["gate_relay_dns_backend_errors_total"] == 0
            assert samples["gate_relay_dns_records"] == 0
            assert samples["gate_relay_dns_records_removed_total"] == 0
            await close_routed(*routed)
            async with httpx.AsyncClient(base_url=urls[0]) as http:
                text = (await http.get("/metrics")).text
            assert 'gate_relay_connections_total{outcome="routed"} 1' in text
            assert 'gate_relay_routed_ended_total{how="closed"} 1' in text
            assert json.loads(await http_get(urls[0], "/nothing"))["error"]
        nursery.cancel_scope.cancel()


async def http_get(base: str, path: str) -> bytes:
    async with httpx.AsyncClient(base_url=base) as http:
        return (await http.get(path)).content
