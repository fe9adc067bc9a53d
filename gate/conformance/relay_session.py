"""The runner as a node registering with a relay (§6): a RelayControl stream, its
requests and the relay's answers as plain maps, each checked as a RelayMessage."""

from __future__ import annotations

from typing import Any

import msgspec

from gate.conformance.probe import Ended, Probe, Wire, error_code
from gate.conformance.registry import CaseFailed
from gate.conformance.wire import RELAY_CONTROL, envelope, frame, preamble
from gate.protocol import RelayMessage
from gate.services.transport.quic import Connection

__all__ = ["RelaySession", "open_relay_control"]

_check = msgspec.msgpack.Decoder(RelayMessage).decode


class RelaySession:
    def __init__(self, probe: Probe, conn: Connection, wire: Wire) -> None:
        self.probe = probe
        self.conn = conn
        self.wire = wire
        self.domain = ""  # the node's name, once asked for

    async def send(self, tag: str, **fields: Any) -> None:
        await self.wire.send(frame(envelope({"type": tag, **fields})))

    async def answer(self) -> dict[str, Any]:
        """The relay's next payload; fails the case if the stream ends or it is invalid."""
        item = await self.wire.frame()
        if isinstance(item, Ended):
            raise CaseFailed(f"the relay's stream {item} without an answer", self.probe.evidence)
        try:
            _check(item)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            value = msgspec.msgpack.decode(item)
            if error_code(value) is not None:
                return dict(value)
            raise CaseFailed(
                f"the relay sent an invalid RelayMessage: {exc}", self.probe.evidence
            ) from None
        message = msgspec.msgpack.decode(item)
        if message.get("version") != 1:  # §3.2: the envelope's version is the preamble's
            raise CaseFailed(f"envelope version {message.get('version')}", self.probe.evidence)
        payload: dict[str, Any] = message["payload"]
        return payload

    async def ask(self, tag: str, expected: str, **fields: Any) -> dict[str, Any]:
        await self.send(tag, **fields)
        payload = await self.answer()
        if payload.get("type") != expected:
            raise CaseFailed(f"{tag} answered with {payload!r:.200}", self.probe.evidence)
        return payload

    async def refused(self, tag: str, code: int, **fields: Any) -> str:
        await self.send(tag, **fields)
        payload = await self.answer()
        if error_code(payload) != code:
            raise CaseFailed(
                f"{tag} {fields} answered with {payload!r:.200}; expected error {code}",
                self.probe.evidence,
            )
        return f"error {code}"

    async def name(self) -> str:
        """Ask for this node's name (§6.3: `N.D`)."""
        answer = await self.ask("domain_request", "domain_response", node_id=self.probe.own_id)
        self.domain = str(answer.get("domain", ""))
        if self.domain.split(".")[0] != self.probe.own_id or "." not in self.domain:
            raise CaseFailed(
                f"the relay named us {self.domain!r}, not <node-id>.<domain>", self.probe.evidence
            )
        return self.domain

    @property
    def relay_domain(self) -> str:
        return self.domain.partition(".")[2]


async def open_relay_control(probe: Probe, *, named: bool = False) -> RelaySession:
    """A relay_control stream on a fresh connection; with `named`, this node's name
    already asked for (`session.domain`)."""
    conn = await probe.dial()
    wire = await probe.open(conn, preamble(RELAY_CONTROL), "relay_control")
    session = RelaySession(probe, conn, wire)
    if named:
        await session.name()
    return session
