"""The runner's side of NodeControl (§5): a handshake with the target and the messages
after it, each checked against the reference types so that a target sending a
malformed message fails the case that reads it."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from gate.conformance.probe import STEP_TIMEOUT, Ended, Probe, Wire, error_code
from gate.conformance.registry import CaseFailed
from gate.conformance.wire import NODE_CONTROL, envelope, frame, preamble
from gate.protocol import NodeMessage
from gate.services.transport.quic import Connection

__all__ = ["ControlSession", "handshake_frame", "open_control"]

AGENT = "gate-conformance"
_check = msgspec.msgpack.Decoder(NodeMessage).decode


def handshake_frame(node_id: str, versions: list[int] | None = None, **extra: Any) -> bytes:
    payload = {
        "type": "handshake",
        "node_id": node_id,
        "versions": [1] if versions is None else versions,
    }
    return frame(envelope({**payload, "agent": AGENT, **extra}))


class ControlSession:
    def __init__(self, probe: Probe, wire: Wire, conn: Connection | None = None) -> None:
        self.probe = probe
        self.wire = wire
        self.conn = conn  # the connection the stream is on (open_control sets it)
        self.answer: dict[str, Any] = {}  # the handshake_response, once read

    async def send(self, tag: str, **fields: Any) -> None:
        await self.wire.send(frame(envelope({"type": tag, **fields})))

    async def next(self, limit: float = STEP_TIMEOUT) -> dict[str, Any] | Ended:
        """The next message's envelope (a plain map), checked as a NodeMessage."""
        item = await self.wire.frame(limit)
        if isinstance(item, Ended):
            return item
        try:
            _check(item)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            value: Any = None
            with contextlib.suppress(msgspec.DecodeError):
                value = msgspec.msgpack.decode(item)
            if error_code(value) is not None:  # a bare error (§3.5): the caller decides
                return {"payload": value}
            raise CaseFailed(
                f"the target sent an invalid NodeMessage: {exc}", self.probe.evidence
            ) from None
        message: dict[str, Any] = msgspec.msgpack.decode(item)
        if message.get("version") != 1:
            raise CaseFailed(
                f"envelope version {message.get('version')}, not the preamble's 1 (§3.2)",
                self.probe.evidence,
            )
        return message

    async def expect(self, tag: str) -> dict[str, Any]:
        """Read up to the next `tag` payload, answering pings and passing over an unasked
        capability_response (§5.5 MAY) or a pong nobody waits for."""
        while True:
            message = await self.next()
            if isinstance(message, Ended):
                raise CaseFailed(f"the stream {message} before {tag}", self.probe.evidence)
            payload: dict[str, Any] = message["payload"]
            kind = payload.get("type")
            if kind == tag:
                return payload
            if kind == "ping" and tag != "ping":
                await self.send("pong", nonce=payload["nonce"])
            elif kind not in ("capability_response", "pong"):
                raise CaseFailed(f"expected {tag}, got {payload!r:.200}", self.probe.evidence)

    async def error(self, code: int) -> str:
        """Read up to the channel's error message (answering pings, passing over pongs and
        capability_responses); it must carry `code`."""
        while True:
            message = await self.next()
            if isinstance(message, Ended):
                raise CaseFailed(f"the stream {message} without an error", self.probe.evidence)
            payload = message["payload"]
            if payload.get("type") in ("ping", "pong", "capability_response"):
                if payload.get("type") == "ping":
                    await self.send("pong", nonce=payload["nonce"])
                continue
            got = error_code(payload)
            if got != code:
                raise CaseFailed(
                    f"expected error {code}, got {payload!r:.200}", self.probe.evidence
                )
            return f"error {got}: {payload.get('message', '')}"


async def open_control(
    probe: Probe,
    *,
    trusted: bool = True,
    accepted: bool = True,
    conn: Connection | None = None,
    node_id: str | None = None,
    versions: list[int] | None = None,
) -> ControlSession:
    """Dial (or use `conn`), open node_control and handshake as this key (or naming
    `node_id`), offering `versions` ([1]); the case fails unless the target accepts (or,
    with `accepted=False`, refuses). The answer is `session.answer`."""
    if conn is None:
        conn = await probe.dial(trusted=trusted)
    own = str((probe.friend if trusted else probe.stranger).node_id)
    hello = handshake_frame(node_id or own, versions)
    wire = await probe.open(conn, preamble(NODE_CONTROL) + hello, "node_control")
    session = ControlSession(probe, wire, conn)
    session.answer = answer = await session.expect("handshake_response")
    if accepted and not answer.get("accepted"):
        raise CaseFailed(
            f"handshake refused: {answer.get('reason')} (does the target trust {own}?)",
            probe.evidence,
        )
    if not accepted and answer.get("accepted"):
        named = "" if node_id is None else f" naming {node_id}"
        raise CaseFailed(
            f"accepted a handshake{named} offering {versions or [1]} from "
            f"{'a trusted key' if trusted else 'a stranger'}; expected a refusal",
            probe.evidence,
        )
    return session
