"""The first message a stranger may send each role, and the answer that shows it was
read: a node answers any handshake (a stranger's is refused, §5.4), a relay answers any
node's domain_request for itself (§6.3). Shared by the framing and message cases, with
the steps of their tables: a stranger's stream that opens with one row's bytes."""

from __future__ import annotations

from typing import Any, Final

from gate.conformance.node_session import AGENT
from gate.conformance.probe import Ended, Probe, Wire, error_code, expect_error
from gate.conformance.registry import CaseFailed, Row
from gate.conformance.wire import MIB, NODE_CONTROL, RELAY_CONTROL, envelope, packed, preamble

__all__ = [
    "ANSWER",
    "ANSWERED",
    "DROP",
    "QUIET",
    "STREAM",
    "answered",
    "changed",
    "first_message",
    "first_stream",
]

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


DROP: Final = object()  # `changed`: remove the key


def changed(
    message: dict[str, Any], *, payload: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A copy of `message` with these envelope `fields` and `payload` keys set (DROP
    removes one)."""
    out = {**message, **fields, "payload": {**message["payload"], **(payload or {})}}
    for where in (out, out["payload"]):
        for key in [k for k, v in where.items() if v is DROP]:
            del where[key]
    return out


ANSWERED: Final = "answered"  # `expect`: the answer to the first message (`answered`)
QUIET: Final = "quiet"  # `expect`: no frame at all (`Wire.quiet`)


async def first_stream(probe: Probe, row: Row) -> str:
    """A table's steps: a stranger's stream of the type the row's role serves, opening
    with `row.send` after the preamble (bytes, or a function of the probe and the role's
    first message, a fresh one), in one write or in `row.pieces`, finished if the row
    says so. `row.expect`: an error code (the target's first frame is that error),
    ANSWERED or QUIET."""
    send = row.send(probe, first_message(row.role, probe)) if callable(row.send) else row.send
    if row.pieces is None:
        wire = await probe.stream(preamble(STREAM[row.role]) + send)
    else:
        wire = await probe.stream(preamble(STREAM[row.role]))
        await wire.send_pieces(send, row.pieces)
    if row.finish:
        await wire.finish()
    if row.expect == ANSWERED:
        return await answered(row.role, wire)
    if row.expect == QUIET:
        return await wire.quiet()
    return await expect_error(wire, row.expect)
