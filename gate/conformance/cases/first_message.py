"""The first message a stranger may send each role, and the answer that shows it was
read: a node answers any handshake (a stranger's is refused, §5.4), a relay answers any
node's domain_request for itself (§6.3). Shared by the framing and message cases."""

from __future__ import annotations

from typing import Any

from gate.conformance.node_session import AGENT
from gate.conformance.probe import Ended, Probe, Wire, error_code
from gate.conformance.registry import CaseFailed
from gate.conformance.wire import MIB, NODE_CONTROL, RELAY_CONTROL, envelope, packed

__all__ = ["ANSWER", "STREAM", "answered", "first_message"]

STREAM = {"node": NODE_CONTROL, "relay": RELAY_CONTROL}
ANSWER = {"node": "handshake_response", "relay": "domain_response"}


def first_message(role: str, probe: Probe, **extra: Any) -> dict[str, Any]:
    if role == "node":
        payload = {"type": "handshake", "node_id": probe.own_id, "versions": [1], "agent": AGENT}
    else:
        payload = {"type": "domain_request", "node_id": probe.own_id}
    return envelope(payload, **extra)


def padded(message: dict[str, Any], size: int = MIB) -> bytes:
    """`message` with an unknown envelope key (`padding`, §4.2) making it `size` bytes."""
    trial = packed({**message, "padding": b"\0" * 70000})
    fill = 70000 + size - len(trial)
    payload = packed({**message, "padding": b"\0" * fill})
    assert len(payload) == size
    return payload


async def answered(role: str, wire: Wire) -> str:
    """The target's next frame is the answer to the first message."""
    value = await wire.value()
    if isinstance(value, Ended):
        raise CaseFailed(f"the stream {value} without an answer", wire.probe.evidence)
    payload = value.get("payload") if isinstance(value, dict) else None
    if not isinstance(payload, dict) or payload.get("type") != ANSWER[role]:
        code = error_code(value)
        what = f"error {code}" if code is not None else repr(value)[:200]
        raise CaseFailed(f"expected {ANSWER[role]}, got {what}", wire.probe.evidence)
    if value.get("version") != 1:  # §3.2: the envelope's version is the preamble's
        raise CaseFailed(f"answer envelope has version {value.get('version')}", wire.probe.evidence)
    return f"answered with {ANSWER[role]}"
