"""Framed messages over a byte stream: the one read loop and the one close.

gate.protocol's sans-IO objects (`Channel`, `FrameDecoder`) say what the bytes mean;
this is the IO around them, the same for every stream type (NodeControl, HttpProxy,
and what comes later): feed the parser what the stream gives until it has an event.
"""

from __future__ import annotations

import contextlib
from typing import Final, Generic, Protocol, TypeVar, overload

import trio

from gate.protocol import NEED_DATA, Channel, FrameDecoder, Sentinel

__all__ = ["READ_SIZE", "ByteStream", "FramedStream", "close_quietly", "receive_event"]

# One read: a preamble, a head, a body and an end usually arrive in one.
READ_SIZE: Final = 65536

M = TypeVar("M")


class ByteStream(Protocol):
    """What a framed stream needs of a bidirectional stream (a QUIC stream in production)."""

    async def send_all(self, data: bytes) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...
    async def send_eof(self) -> None: ...
    async def aclose(self) -> None: ...


@overload
async def receive_event(
    stream: ByteStream, parser: Channel[M], idle_limit: float | None = None
) -> M | Sentinel: ...
@overload
async def receive_event(
    stream: ByteStream, parser: FrameDecoder, idle_limit: float | None = None
) -> bytes | Sentinel: ...
async def receive_event(
    stream: ByteStream,
    parser: Channel[M] | FrameDecoder,
    idle_limit: float | None = None,
) -> M | bytes | Sentinel:
    """The parser's next message (a Channel's) or frame (a FrameDecoder's), or EOF,
    reading `stream` only while the parser needs data; b"" from the stream tells the
    parser the peer finished its side. The parser raises ProtocolError on bad input.

    With `idle_limit`, TooSlowError if no data comes for that long. (Not trio.fail_after
    around the call: the limit covers only the waits for data, so a message already
    buffered, the usual case when a head, body and end arrive together, costs no cancel
    scope.)"""
    next_event = parser.next_event if isinstance(parser, Channel) else parser.next_frame
    while True:
        event = next_event()
        if event is not NEED_DATA:
            return event
        if idle_limit is None:
            data = await stream.receive_some(READ_SIZE)
        else:
            with trio.CancelScope(deadline=trio.current_time() + idle_limit) as waiting:
                data = await stream.receive_some(READ_SIZE)
            if waiting.cancelled_caught:
                raise trio.TooSlowError
        parser.receive_data(data)


class FramedStream(Generic[M]):
    """A Channel and the stream under it: messages in and out."""

    def __init__(self, stream: ByteStream, channel: Channel[M]) -> None:
        self.stream = stream
        self.channel = channel

    async def receive(self, idle_limit: float | None = None) -> M | Sentinel:
        """The next message, or EOF at the peer's clean end (see `receive_event`)."""
        return await receive_event(self.stream, self.channel, idle_limit)

    async def send(self, message: M) -> None:
        await self.stream.send_all(self.channel.send(message))


async def close_quietly(stream: ByteStream) -> None:
    """Close, raising no error. A trio stream's aclose closes even when cancelled, and
    QuicStream's is bounded in time, so no shielded scope of our own is needed here."""
    with contextlib.suppress(Exception):
        await stream.aclose()
