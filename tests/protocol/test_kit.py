"""The conformance kit (gate.conformance.kit) against Gate's own sans-IO implementation,
gate/protocol: the adapters below are what a third party writes for its own."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gate.conformance import kit
from gate.protocol import (
    EOF,
    HTTP_PROXY,
    NEED_DATA,
    NODE_CONTROL,
    RELAY_CONTROL,
    STREAM_TYPE_CODES,
    Channel,
    FrameDecoder,
    PreambleReader,
    Role,
    encode_frame,
)

SPECS = {"node_control": NODE_CONTROL, "relay_control": RELAY_CONTROL, "http_proxy": HTTP_PROXY}


class Preambles:
    def __init__(self) -> None:
        self.reader = PreambleReader()

    def feed(self, data: bytes) -> tuple[int, int] | None:
        result = self.reader.receive_data(data)
        if result is NEED_DATA:
            return None
        return result.version, STREAM_TYPE_CODES[result.stream_type]  # type: ignore[union-attr]


class Frames:
    def __init__(self) -> None:
        self.decoder = FrameDecoder()

    def feed(self, data: bytes) -> list[bytes]:
        self.decoder.receive_data(data)
        out = []
        while isinstance(frame := self.decoder.next_frame(), bytes):
            out.append(frame)
        return out


class ChannelEnd:
    def __init__(self, name: str, role: str) -> None:
        self.channel: Channel[Any] = Channel(SPECS[name], Role(role))
        self.decode = msgspec.msgpack.Decoder(SPECS[name].message_type).decode

    def receive(self, payload: bytes) -> None:
        self.channel.receive_data(encode_frame(payload))
        assert self.channel.next_event() is not NEED_DATA

    def send(self, payload: bytes) -> None:
        self.channel.send(self.decode(payload))

    def receive_finish(self) -> None:
        self.channel.receive_data(b"")
        assert self.channel.next_event() is EOF

    def finish(self) -> None:
        self.channel.send_finish()


def test_gates_preamble_reader_passes_the_kit():
    kit.check_preamble_reader(Preambles)


def test_gates_frame_decoder_passes_the_kit():
    kit.check_frame_decoder(Frames)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gates_channels_pass_the_kit(name):
    kit.check_channel(name, lambda role: ChannelEnd(name, role))


def test_the_kit_finds_a_channel_that_allows_too_much():
    """A channel that accepts anything: the kit must list the transitions it should not."""

    class Lax:
        def receive(self, payload: bytes) -> None: ...
        def send(self, payload: bytes) -> None: ...
        def receive_finish(self) -> None: ...
        def finish(self) -> None: ...

    with pytest.raises(AssertionError, match=r"as responder: initiator ping is not in the table"):
        kit.check_channel("node_control", lambda role: Lax())


def test_the_kit_finds_a_decoder_with_a_larger_maximum():
    """A decoder that lets a frame over 1 MiB through (§3.4)."""

    class Lenient(Frames):
        def __init__(self) -> None:
            self.decoder = FrameDecoder(2 << 20)

    with pytest.raises(AssertionError, match=r"1 MiB \+ 1 alone: expected 103 at once, got None"):
        kit.check_frame_decoder(Lenient)


def test_the_kit_finds_a_preamble_reader_that_waits_for_8_bytes():
    """A reader that checks the magic only once all 8 bytes are in (§3.1)."""

    class Patient(Preambles):
        def __init__(self) -> None:
            super().__init__()
            self.buffer = b""

        def feed(self, data: bytes) -> tuple[int, int] | None:
            self.buffer += data
            if data and len(self.buffer) < 8:
                return None
            return super().feed(self.buffer)

    with pytest.raises(AssertionError, match=r"expected 100 at byte 0"):
        kit.check_preamble_reader(Patient)
