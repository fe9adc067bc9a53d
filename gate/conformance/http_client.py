"""The runner as an http_proxy requester (§7): send a request as frames, read the
response back, every frame checked against the reference HttpFrame types."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gate.conformance.node_session import open_control
from gate.conformance.probe import Ended, Probe, Wire, error_code
from gate.conformance.registry import CaseFailed, CaseSkipped
from gate.conformance.wire import HTTP_PROXY, frame, preamble
from gate.protocol import HttpFrame
from gate.services.transport.quic import Connection

__all__ = [
    "Response",
    "body",
    "complete",
    "end",
    "head",
    "models_of",
    "peer_connection",
    "read_response",
    "request",
]

_check = msgspec.msgpack.Decoder(HttpFrame).decode


def head(method: str = "GET", target: str = "/v1/models", headers: Any = ()) -> bytes:
    return frame(
        {"type": "request_head", "method": method, "target": target, "headers": list(headers)}
    )


def body(data: bytes) -> bytes:
    return frame({"type": "body", "data": data})


def end() -> bytes:
    return frame({"type": "end"})


@dataclass
class Response:
    status: int | None = None
    headers: list[list[str]] = field(default_factory=list)
    body: bytes = b""
    body_frames: int = 0
    error: int | None = None  # a StreamError's code
    ended: bool = False  # `end` arrived
    after: Ended | None = None  # how the stream ended after the last frame


async def peer_connection(probe: Probe) -> Connection:
    """A connection from the trusted key with an accepted handshake on it (§5.4: a node
    SHOULD NOT serve http_proxy before one); the control stream stays open."""
    conn = await probe.dial(trusted=True)
    await open_control(probe, conn=conn)
    return conn


async def request(
    probe: Probe, *frames: bytes, conn: Connection | None = None, label: str = "http_proxy"
) -> Wire:
    """An http_proxy stream carrying `frames` after the preamble, on `conn` or on a new
    peer connection."""
    if conn is None:
        conn = await peer_connection(probe)
    return await probe.open(conn, preamble(HTTP_PROXY) + b"".join(frames), label)


async def read_response(
    wire: Wire,
    *,
    until_end: bool = True,
    stop_after_body: bool = False,
    response: Response | None = None,
) -> Response:
    """Frames up to `end`, an error, or the end of the stream (or the first body frame,
    with `stop_after_body`); with `until_end`, also the stream's end after `end`.
    `response`: one read so far, to go on with."""
    response = response or Response()
    while True:
        item = await wire.frame()
        if isinstance(item, Ended):
            response.after = item
            return response
        try:
            message = _check(item)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CaseFailed(
                f"the target sent an invalid HttpFrame: {exc}", wire.probe.evidence
            ) from None
        kind = type(message).__struct_config__.tag
        if kind == "response_head":
            response.status, response.headers = message.status, [list(h) for h in message.headers]  # type: ignore[union-attr]
        elif kind == "body":
            response.body += message.data  # type: ignore[union-attr]
            response.body_frames += 1
            if stop_after_body and message.data:  # type: ignore[union-attr]
                return response
        elif kind == "end":
            response.ended = True
            if not until_end:
                return response
            response.after = await wire.ends()
            return response
        elif kind == "error":
            response.error = error_code(msgspec.msgpack.decode(item))
            return response
        else:
            raise CaseFailed(f"a responder sent {kind}", wire.probe.evidence)


def complete(response: Response, wire: Wire) -> str:
    """A response that is whole: head, body, end, then the stream finished."""
    if response.error is not None:
        raise CaseFailed(f"the target answered with error {response.error}", wire.probe.evidence)
    if response.status is None or not response.ended:
        raise CaseFailed(
            f"the response is incomplete (stream {response.after})", wire.probe.evidence
        )
    if response.after is not None and response.after.reset not in (None, 0):
        raise CaseFailed(f"after end the stream was {response.after}", wire.probe.evidence)
    for name, value in response.headers:
        # §7.1: Content-Length MAY accompany a body, and then MUST be its length.
        if name.lower() == "content-length" and value.strip() != str(len(response.body)):
            raise CaseFailed(
                f"content-length {value} for a body of {len(response.body)} bytes",
                wire.probe.evidence,
            )
    frames = response.body_frames
    return f"{response.status}, {len(response.body)} body bytes in {frames} frame(s), end"


async def models_of(probe: Probe, conn: Connection) -> list[str]:
    """The model ids the target lists at GET /v1/models (skips the case if none)."""
    wire = await request(probe, head(), end(), conn=conn, label="models")
    response = await read_response(wire)
    try:
        listing = json.loads(response.body)
        ids = [m["id"] for m in listing["data"]]
    except (ValueError, KeyError, TypeError):
        ids = []
    if not ids:
        raise CaseSkipped("the target lists no model at GET /v1/models")
    return ids
