"""A RelayControl stream with its channel (spec §6): envelopes in and out, for the relay
(responder) and for a node registering with it (initiator)."""

from __future__ import annotations

import time

from gate.protocol import (
    EOF,
    PROTOCOL_VERSION,
    RELAY_CONTROL,
    Channel,
    RelayError,
    RelayMessage,
    RelayPayload,
    Role,
)
from gate.services.transport.framed import ByteStream, receive_event

__all__ = ["RelayControlStream", "RelayRefused"]


class RelayRefused(Exception):
    """The relay answered a request with an error (its code and message)."""

    def __init__(self, error: RelayError) -> None:
        super().__init__(f"relay refused ({error.code}): {error.message}")
        self.code = error.code


class RelayControlStream:
    def __init__(self, stream: ByteStream, role: Role, trailing: bytes = b"") -> None:
        self.stream = stream
        self.channel = Channel(RELAY_CONTROL, role)
        if trailing:
            self.channel.receive_data(trailing)
        self._ids = 0

    async def send(self, payload: RelayPayload, reply_to: int | None = None) -> None:
        self._ids += 1
        message = RelayMessage(
            version=PROTOCOL_VERSION,
            id=self._ids,
            timestamp=int(time.time() * 1000),
            payload=payload,
            reply_to=reply_to,
        )
        await self.stream.send_all(self.channel.send(message))

    async def receive(self) -> RelayMessage | None:
        """The next message, or None at the peer's clean end of the stream."""
        event = await receive_event(self.stream, self.channel)
        if event is EOF:
            return None
        assert isinstance(event, RelayMessage)
        return event

    async def request(self, payload: RelayPayload) -> RelayPayload:
        """Send one request and return its answer; RelayRefused for an error answer,
        ConnectionError if the relay ends the stream first. The caller bounds the time."""
        await self.send(payload)
        answer = await self.receive()
        if answer is None:
            raise ConnectionError("the relay closed the control stream")
        if isinstance(answer.payload, RelayError):
            raise RelayRefused(answer.payload)
        return answer.payload
