"""Cases for §2.2 (ALPN), §3.1-§3.3 (preamble, versions, stream types) and §3.5 (how a
stream is rejected), for both roles: a node and a relay read preambles alike."""

from __future__ import annotations

from gate.conformance.cases.first_message import answered, first_message
from gate.conformance.probe import Probe, expect_error
from gate.conformance.registry import CaseFailed, Level, case
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

STRANGER_SERVED = {"node": NODE_CONTROL, "relay": RELAY_CONTROL}


async def _rejected(probe: Probe, raw: bytes, code: int, *, finish: bool = False) -> str:
    conn = await probe.dial()
    wire = await probe.open(conn, raw)
    if finish:
        await wire.finish()
    detail = await expect_error(wire, code, bare_only=True)
    ended = await wire.ends()
    return f"{detail}; then the stream {ended}"


def _register(role: str) -> None:
    served = STRANGER_SERVED[role]

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
        f"{role}/3.1/1",
        "refuses a wrong magic (an HTTP request) with MALFORMED_PREAMBLE",
        "MUST reject the stream with MALFORMED_PREAMBLE at the first byte that disagrees",
    )
    async def bad_magic(probe: Probe) -> str:
        return await _rejected(probe, b"HTTP/1.1", ErrorCode.MALFORMED_PREAMBLE)

    @case(
        f"{role}/3.1/2",
        "rejects a TLS record's first 3 bytes at once, without waiting for 8",
        "A receiver MUST check each byte against the magic as it arrives",
    )
    async def tls_first_byte(probe: Probe) -> str:
        # Three bytes and no end: a receiver that waits for 8 never answers.
        return await _rejected(probe, b"\x16\x03\x01", ErrorCode.MALFORMED_PREAMBLE)

    @case(
        f"{role}/3.1/3",
        "rejects a stream that ends after 5 preamble bytes as TRUNCATED",
        "A stream that ends before 8 preamble bytes arrived MUST be rejected as TRUNCATED.",
    )
    async def truncated(probe: Probe) -> str:
        return await _rejected(probe, b"GATE\x01", ErrorCode.TRUNCATED, finish=True)

    @case(
        f"{role}/3.1/4",
        "reads a preamble sent one byte at a time",
        "Once all 8 bytes are in, a receiver checks the major version (§3.2), then the stream type",
    )
    async def byte_by_byte(probe: Probe) -> str:
        conn = await probe.dial()
        wire = await probe.open(conn)
        await wire.send_pieces(preamble(200), 1)
        return await expect_error(wire, ErrorCode.UNKNOWN_STREAM_TYPE, bare_only=True)

    @case(
        f"{role}/3.2/1",
        "refuses major version 2 with UNSUPPORTED_VERSION",
        "A receiver MUST reject a stream whose major version it does not support with "
        "UNSUPPORTED_VERSION.",
    )
    async def version_2(probe: Probe) -> str:
        return await _rejected(probe, preamble(served, version=2), ErrorCode.UNSUPPORTED_VERSION)

    @case(
        f"{role}/3.2/2",
        "refuses version 0 with UNSUPPORTED_VERSION",
        "Version 0 is never valid.",
    )
    async def version_0(probe: Probe) -> str:
        return await _rejected(probe, preamble(served, version=0), ErrorCode.UNSUPPORTED_VERSION)

    @case(
        f"{role}/3.2/3",
        "refuses version 255 with UNSUPPORTED_VERSION",
        "A receiver MUST reject a stream whose major version it does not support",
    )
    async def version_255(probe: Probe) -> str:
        return await _rejected(probe, preamble(served, version=255), ErrorCode.UNSUPPORTED_VERSION)

    @case(
        f"{role}/3.3/1",
        "refuses stream type 200 with UNKNOWN_STREAM_TYPE",
        "A receiver MUST reject a stream with an unknown stream type code with "
        "UNKNOWN_STREAM_TYPE.",
    )
    async def type_200(probe: Probe) -> str:
        return await _rejected(probe, preamble(200), ErrorCode.UNKNOWN_STREAM_TYPE)

    @case(
        f"{role}/3.3/2",
        "refuses stream type 0 with UNKNOWN_STREAM_TYPE",
        "A receiver MUST reject a stream with an unknown stream type code",
    )
    async def type_0(probe: Probe) -> str:
        return await _rejected(probe, preamble(0), ErrorCode.UNKNOWN_STREAM_TYPE)

    @case(
        f"{role}/3.3/3",
        "refuses stream type 5 with UNKNOWN_STREAM_TYPE",
        "A receiver MUST reject a stream with an unknown stream type code",
    )
    async def type_5(probe: Probe) -> str:
        return await _rejected(probe, preamble(5), ErrorCode.UNKNOWN_STREAM_TYPE)

    not_served = (
        [("relay_control", RELAY_CONTROL), ("tls_proxy", TLS_PROXY)]
        if role == "node"
        else [("node_control", NODE_CONTROL), ("http_proxy", HTTP_PROXY), ("tls_proxy", TLS_PROXY)]
    )
    for n, (name, code) in enumerate(not_served, start=4):
        _not_served(role, n, name, code)

    @case(
        f"{role}/3.5/1",
        "a rejection is one bare error frame, then a finish (not a reset)",
        "It SHOULD send one frame whose payload is a bare error object",
        level=Level.SHOULD,
    )
    async def rejection_shape(probe: Probe) -> str:
        conn = await probe.dial()
        wire = await probe.open(conn, b"HTTP/1.1")
        detail = await expect_error(wire, ErrorCode.MALFORMED_PREAMBLE, bare_only=True)
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
        conn = await probe.dial()
        first = frame(first_message(role, probe))
        wire = await probe.open(conn, preamble(served, minor=7, reserved=0xFF) + first)
        return await answered(role, wire)


def _not_served(role: str, n: int, name: str, code: int) -> None:
    @case(
        f"{role}/3.3/{n}",
        f"rejects a {name} stream, a type it does not serve, with STREAM_TYPE_NOT_SERVED",
        "MUST reject the stream (§3.5) with STREAM_TYPE_NOT_SERVED (106), not UNKNOWN_STREAM_TYPE",
    )
    async def not_served(probe: Probe) -> str:
        return await _rejected(probe, preamble(code), ErrorCode.STREAM_TYPE_NOT_SERVED)


for _role in ("node", "relay"):
    _register(_role)
