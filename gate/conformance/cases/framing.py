"""Cases for §3.4 (frames), on the stream type each role serves to strangers:
node_control on a node, relay_control on a relay.

The table's rows are the bytes sent after the preamble (`send`: bytes, or a function of
the probe and the role's first message) and the answer (an error code, or ANSWERED: the
first message was read); first_stream runs them."""

from __future__ import annotations

from gate.conformance.cases.first_message import (
    ANSWERED,
    STREAM,
    answered,
    first_message,
    first_stream,
    padded,
)
from gate.conformance.probe import Probe, error_code
from gate.conformance.registry import CaseFailed, Row, case, table
from gate.conformance.wire import MIB, frame, preamble
from gate.protocol import ErrorCode

_TRUNCATED_QUOTE = (
    "A stream that ends inside a frame (inside the header or the payload) MUST be treated as "
    "TRUNCATED."
)
# 3.4/2 sends only the header and the stream stays open: the answer must not wait for a
# payload.
table(
    [
        Row(
            "3.4/1",
            "refuses a length of 2^31-1 with FRAME_TOO_LARGE",
            "MUST reject a larger frame with FRAME_TOO_LARGE.",
            send=(0x7FFF_FFFF).to_bytes(4, "big"),
            expect=ErrorCode.FRAME_TOO_LARGE,
        ),
        Row(
            "3.4/2",
            "refuses 1 MiB + 1 from the 4-byte header alone",
            "A receiver MUST check the length against its maximum from the 4-byte header alone, "
            "before buffering any of the payload",
            send=(MIB + 1).to_bytes(4, "big"),
            expect=ErrorCode.FRAME_TOO_LARGE,
        ),
        Row(
            "3.4/3",
            "accepts a frame of exactly 1 MiB",
            "A receiver MUST accept every frame up to 1 MiB.",
            send=lambda _, first: frame(padded(first)),
            expect=ANSWERED,
        ),
        Row(
            "3.4/4",
            "a stream that ends inside a frame header is TRUNCATED",
            _TRUNCATED_QUOTE,
            send=b"\x00\x00",
            finish=True,
            expect=ErrorCode.TRUNCATED,
        ),
        Row(
            "3.4/5",
            "a stream that ends inside a frame payload is TRUNCATED",
            _TRUNCATED_QUOTE,
            send=lambda _, first: _first_half(frame(first)),
            finish=True,
            expect=ErrorCode.TRUNCATED,
        ),
        Row(
            "3.4/6",
            "reads a frame delivered one byte at a time",
            "a receiver MUST accept frames delivered in any pieces, down to one byte at a time.",
            send=lambda _, first: frame(first),
            pieces=1,
            expect=ANSWERED,
        ),
        Row(
            "3.4/8",
            "a zero-length frame is well formed but not a message: INVALID_MESSAGE",
            "A zero-length frame is well formed, but an empty payload is not a message (§4.2).",
            send=b"\x00\x00\x00\x00",
            expect=ErrorCode.INVALID_MESSAGE,
        ),
        Row(
            "3.4/9",
            "accepts a frame of 1 MiB - 1 written in 64 KiB pieces",
            "A receiver MUST accept every frame up to 1 MiB.",
            send=lambda _, first: frame(padded(first, MIB - 1)),
            pieces=65536,
            expect=ANSWERED,
        ),
    ],
    first_stream,
    roles=("node", "relay"),
)


def _first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _register(role: str) -> None:
    kind = STREAM[role]

    @case(
        f"{role}/3.4/7",
        "reads a frame split at every byte position (two writes each)",
        "The transport may split and join frames arbitrarily",
    )
    async def every_split(probe: Probe) -> str:
        whole = frame(first_message(role, probe))
        # A stream per split point (a connection each: a node closes the connection
        # after refusing a stranger's handshake); every 9th point, and all of the header's.
        points = sorted({1, 2, 3, 4, 5, *range(6, len(whole), 9)})
        for at in points:
            conn = await probe.dial()
            wire = await probe.open(conn, label=f"split at {at}")
            await wire.send(preamble(kind) + whole[:at])
            await wire.send(whole[at:])
            await answered(role, wire)
            await wire.close()
            conn.close()
        return f"answered at {len(points)} split points of a {len(whole)}-byte frame"

    @case(
        f"{role}/3.5/2",
        "an error about the first frame is the channel's own error message, not a bare one",
        "from then on every error the responder sends on that stream, about its first frame "
        "included (an oversized or undecodable first frame, a first message out of turn), is "
        "that channel's own `error` message",
    )
    async def running_channel(probe: Probe) -> str:
        seen = []
        for label, first in (
            ("oversized", (MIB + 1).to_bytes(4, "big")),
            ("undecodable", frame(b"\xc1")),
        ):
            wire = await probe.stream(preamble(kind) + first)
            value = await wire.value()
            if not (isinstance(value, dict) and isinstance(value.get("payload"), dict)):
                raise CaseFailed(
                    f"the {label} first frame was answered with {value!r:.200}, not an "
                    f"{'NodeMessage' if role == 'node' else 'RelayMessage'} error",
                    probe.evidence,
                )
            seen.append(f"{label}: error {error_code(value)} in an envelope")
        return "; ".join(seen)


for _role in ("node", "relay"):
    _register(_role)
