"""Cases for §2.2 (ALPN), §3.1-§3.3 (preamble, versions, stream types) and §3.5 (how a
stream is rejected), for both roles: a node and a relay read preambles alike."""

from __future__ import annotations

from gate.conformance.cases.first_message import STREAM, answered, first_message
from gate.conformance.probe import Probe, expect_error
from gate.conformance.registry import CaseFailed, Level, Row, case, table
from gate.conformance.wire import (
    HTTP_PROXY,
    NODE_CONTROL,
    RELAY_CONTROL,
    TLS_PROXY,
    frame,
    preamble,
)
from gate.protocol import ErrorCode
from gate.services.transport.quic import ConnectError

MALFORMED = ErrorCode.MALFORMED_PREAMBLE
UNSUPPORTED = ErrorCode.UNSUPPORTED_VERSION
UNKNOWN_TYPE = ErrorCode.UNKNOWN_STREAM_TYPE
NOT_SERVED = ErrorCode.STREAM_TYPE_NOT_SERVED


# --- rejected streams: a stranger's stream opens with `send` (bytes, or a function of
# the stream type the role serves to strangers), finished when the row says so; the
# target answers with one bare error `expect`, then the stream ends.


async def _rejected(probe: Probe, row: Row) -> str:
    raw = row.send(STREAM[row.role]) if callable(row.send) else row.send
    wire = await probe.stream(raw)
    if row.finish:
        await wire.finish()
    detail = await expect_error(wire, row.expect, bare_only=True)
    ended = await wire.ends()
    return f"{detail}; then the stream {ended}"


_UNKNOWN_TYPE_QUOTE = "A receiver MUST reject a stream with an unknown stream type code"
_NOT_SERVED_QUOTE = (
    "MUST reject the stream (§3.5) with STREAM_TYPE_NOT_SERVED (106), not UNKNOWN_STREAM_TYPE"
)
# Three bytes and no end in 3.1/2: a receiver that waits for 8 never answers.
table(
    [
        Row(
            "3.1/1",
            "refuses a wrong magic (an HTTP request) with MALFORMED_PREAMBLE",
            "MUST reject the stream with MALFORMED_PREAMBLE at the first byte that disagrees",
            send=b"HTTP/1.1",
            expect=MALFORMED,
        ),
        Row(
            "3.1/2",
            "rejects a TLS record's first 3 bytes at once, without waiting for 8",
            "A receiver MUST check each byte against the magic as it arrives",
            send=b"\x16\x03\x01",
            expect=MALFORMED,
        ),
        Row(
            "3.1/3",
            "rejects a stream that ends after 5 preamble bytes as TRUNCATED",
            "A stream that ends before 8 preamble bytes arrived MUST be rejected as TRUNCATED.",
            send=b"GATE\x01",
            finish=True,
            expect=ErrorCode.TRUNCATED,
        ),
        Row(
            "3.2/1",
            "refuses major version 2 with UNSUPPORTED_VERSION",
            "A receiver MUST reject a stream whose major version it does not support with "
            "UNSUPPORTED_VERSION.",
            send=lambda served: preamble(served, version=2),
            expect=UNSUPPORTED,
        ),
        Row(
            "3.2/2",
            "refuses version 0 with UNSUPPORTED_VERSION",
            "Version 0 is never valid.",
            send=lambda served: preamble(served, version=0),
            expect=UNSUPPORTED,
        ),
        Row(
            "3.2/3",
            "refuses version 255 with UNSUPPORTED_VERSION",
            "A receiver MUST reject a stream whose major version it does not support",
            send=lambda served: preamble(served, version=255),
            expect=UNSUPPORTED,
        ),
        Row(
            "3.3/1",
            "refuses stream type 200 with UNKNOWN_STREAM_TYPE",
            "A receiver MUST reject a stream with an unknown stream type code with "
            "UNKNOWN_STREAM_TYPE.",
            send=preamble(200),
            expect=UNKNOWN_TYPE,
        ),
        Row(
            "3.3/2",
            "refuses stream type 0 with UNKNOWN_STREAM_TYPE",
            _UNKNOWN_TYPE_QUOTE,
            send=preamble(0),
            expect=UNKNOWN_TYPE,
        ),
        Row(
            "3.3/3",
            "refuses stream type 5 with UNKNOWN_STREAM_TYPE",
            _UNKNOWN_TYPE_QUOTE,
            send=preamble(5),
            expect=UNKNOWN_TYPE,
        ),
    ],
    _rejected,
    roles=("node", "relay"),
)
# The stream types each role does not serve (§3.3).
table(
    [
        Row(
            "node/3.3/4",
            "rejects a relay_control stream, a type it does not serve, with STREAM_TYPE_NOT_SERVED",
            _NOT_SERVED_QUOTE,
            send=preamble(RELAY_CONTROL),
            expect=NOT_SERVED,
        ),
        Row(
            "node/3.3/5",
            "rejects a tls_proxy stream, a type it does not serve, with STREAM_TYPE_NOT_SERVED",
            _NOT_SERVED_QUOTE,
            send=preamble(TLS_PROXY),
            expect=NOT_SERVED,
        ),
        Row(
            "relay/3.3/4",
            "rejects a node_control stream, a type it does not serve, with STREAM_TYPE_NOT_SERVED",
            _NOT_SERVED_QUOTE,
            send=preamble(NODE_CONTROL),
            expect=NOT_SERVED,
        ),
        Row(
            "relay/3.3/5",
            "rejects a http_proxy stream, a type it does not serve, with STREAM_TYPE_NOT_SERVED",
            _NOT_SERVED_QUOTE,
            send=preamble(HTTP_PROXY),
            expect=NOT_SERVED,
        ),
        Row(
            "relay/3.3/6",
            "rejects a tls_proxy stream, a type it does not serve, with STREAM_TYPE_NOT_SERVED",
            _NOT_SERVED_QUOTE,
            send=preamble(TLS_PROXY),
            expect=NOT_SERVED,
        ),
    ],
    _rejected,
)


# --- the cases of their own shape, for each role ------------------------------------------


def _register(role: str) -> None:
    served = STREAM[role]

    @case(f"{role}/2.2/1", "connects with ALPN gate/1", "Connections MUST use the ALPN `gate/1`")
    async def alpn(probe: Probe) -> str:
        await probe.dial()
        return "connected"

    @case(
        f"{role}/2.2/2",
        "refuses a connection with another ALPN",
        "An endpoint MUST NOT accept Gate streams on a connection with another ALPN.",
    )
    async def other_alpn(probe: Probe) -> str:
        try:
            await probe.stranger.connect(
                probe.target.node_id, probe.target.addresses, alpn=b"gate/conformance-unknown"
            )
        except ConnectError as exc:
            return f"refused: {exc}"
        raise CaseFailed("the target accepted an unknown ALPN", probe.evidence)

    @case(
        f"{role}/3.1/4",
        "reads a preamble sent one byte at a time",
        "Once all 8 bytes are in, a receiver checks the major version (§3.2), then the stream type",
    )
    async def byte_by_byte(probe: Probe) -> str:
        wire = await probe.stream()
        await wire.send_pieces(preamble(200), 1)
        return await expect_error(wire, UNKNOWN_TYPE, bare_only=True)

    @case(
        f"{role}/3.5/1",
        "a rejection is one bare error frame, then a finish (not a reset)",
        "It SHOULD send one frame whose payload is a bare error object",
        level=Level.SHOULD,
    )
    async def rejection_shape(probe: Probe) -> str:
        wire = await probe.stream(b"HTTP/1.1")
        detail = await expect_error(wire, MALFORMED, bare_only=True)
        ended = await wire.ends()
        if ended.reset is not None:
            raise CaseFailed(f"after the error frame the stream was {ended}", probe.evidence)
        return f"{detail}; then finished"

    @case(
        f"{role}/3.2/4",
        "ignores the minor version and the reserved byte",
        "The minor version and the reserved byte MUST be sent as 0 and MUST be ignored on receipt.",
    )
    async def minor_ignored(probe: Probe) -> str:
        # The stream type this role serves to strangers: its first message is answered
        # only if the preamble was read as version 1.
        first = frame(first_message(role, probe))
        wire = await probe.stream(preamble(served, minor=7, reserved=0xFF) + first)
        return await answered(role, wire)


for _role in ("node", "relay"):
    _register(_role)
