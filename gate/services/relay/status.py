"""The relay's status on `status_bind`, plain HTTP, for its operator: `GET /health`
(JSON) and `GET /metrics` (Prometheus text). Served by the node's own HTTP machinery
(gate.services.http: the accept loop and the router) and rendered by the node's
metrics code (gate.services.gateway.metrics.Values): one copy of each. The DNS
challenge counters come from gate.services.relay.dns.challenges."""

from __future__ import annotations

import time
from collections.abc import Callable

from gate import __version__
from gate.protocol import NodeId
from gate.services.gateway.metrics import Values, send_exposition
from gate.services.http.router import Receive, Router, Scope, Send, send_json
from gate.services.relay.dns.challenges import OUTCOMES as DNS_OUTCOMES
from gate.services.relay.dns.challenges import ChallengeRecords
from gate.services.relay.front import TlsFront
from gate.services.relay.registry import NameRegistry

__all__ = ["OUTCOMES", "status_app"]

# Every outcome is rendered, zero or not, so a dashboard's query finds its series from
# the first scrape on.
OUTCOMES = (
    "routed",
    "unknown_name",
    "not_activated",
    "node_unreachable",
    "node_refused",
    "over_cap_global",
    "over_cap_client",
    "over_cap_node",
    "over_cap_node_streams",
    "bad_client_hello",
    "hello_timeout",
)


def status_app(
    *,
    node_id: NodeId,
    domain: str,
    front: TlsFront,
    registry: NameRegistry,
    connected: Callable[[], int],
    challenges: ChallengeRecords,
) -> Router:
    started = time.monotonic()

    def registered() -> int:
        return sum(1 for name in registry.names() if name.activated)

    values = Values()
    values.register_gauge(
        "gate_relay_open_connections",
        "Browser connections open now.",
        lambda: front.open_connections,
    )
    values.register_family(
        "gate_relay_bytes_total",
        "counter",
        "Bytes relayed: in is client to node, out node to client.",
        "direction",
        lambda: {"in": front.bytes_in, "out": front.bytes_out},
    )
    values.register_family(
        "gate_relay_connections_total",
        "counter",
        "Browser connections ended or refused, by outcome.",
        "outcome",
        lambda: {outcome: front.outcomes[outcome] for outcome in OUTCOMES},
    )
    values.register_family(
        "gate_relay_bad_client_hello_total",
        "counter",
        "Connections whose ClientHello was refused, by reason.",
        "reason",
        lambda: dict(front.bad_hello),
    )
    values.register_family(
        "gate_relay_routed_ended_total",
        "counter",
        "Routed connections ended: closed (both sides), idle (timeout) or reset.",
        "how",
        lambda: {how: front.ended[how] for how in ("closed", "idle", "reset")},
    )
    values.register_gauge(
        "gate_relay_registered_nodes", "Nodes that activated their name here.", registered
    )
    values.register_gauge(
        "gate_relay_connected_nodes", "Nodes with a connection to this relay now.", connected
    )

    values.register_family(
        "gate_relay_dns_challenges_total",
        "counter",
        "dns_challenge requests by outcome: published, refused (another node's name, or no"
        " DNS backend), rate_limited, failed (the backend could not publish).",
        "outcome",
        lambda: {outcome: challenges.outcomes[outcome] for outcome in DNS_OUTCOMES},
    )
    values.register_counter(
        "gate_relay_dns_backend_errors_total",
        "Calls to the DNS backend that failed (publish, remove, the look for leftovers).",
        lambda: challenges.backend_errors,
    )
    values.register_gauge(
        "gate_relay_dns_records", "Challenge TXT records published now.", lambda: len(challenges)
    )
    values.register_counter(
        "gate_relay_dns_records_removed_total",
        "Challenge TXT records removed (activation, disconnect, lifetime, stop, failure).",
        lambda: challenges.removed,
    )

    async def health(scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(
            send,
            200,
            {
                "status": "ok",
                "node_id": str(node_id),
                "domain": domain,
                "version": __version__,
                "uptime_s": round(time.monotonic() - started, 3),
                "registered_nodes": registered(),
                "connected_nodes": connected(),
                "open_connections": front.open_connections,
                "dns": {
                    "backend": challenges.backend.name if challenges.backend else "none",
                    "records": len(challenges),
                    "removed": challenges.removed,
                    "backend_errors": challenges.backend_errors,
                    **{outcome: challenges.outcomes[outcome] for outcome in DNS_OUTCOMES},
                },
            },
        )

    async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
        await send_exposition(send, values.render())

    router = Router()
    router.add("GET", "/health", health)
    router.add("GET", "/metrics", metrics)
    return router
