"""Cases for §7.1-§7.3 (HttpProxy: exchanges, the state table, truncation and
cancellation), §4.3 and §9 on a node's http_proxy streams. They need a key the node
trusts; each connection first has an accepted handshake (§5.4).

Two tables: frames the state table forbids (`_refused`), and requests cancelled before
their end (`_cancelled`); the cases of their own shape follow them."""

from __future__ import annotations

import json
from dataclasses import dataclass

import trio

from gate.conformance.http_client import (
    Response,
    body,
    complete,
    end,
    head,
    models_of,
    peer_connection,
    read_response,
    request,
)
from gate.conformance.probe import Ended, Probe, Wire, expect_error
from gate.conformance.registry import CaseFailed, Level, Row, case, table
from gate.conformance.wire import MIB, frame
from gate.protocol import ErrorCode
from gate.services.transport.quic import Connection

CHAT = "/v1/chat/completions"
JSON = [["content-type", "application/json"]]


def _chat_body(model: str, *, stream: bool, tokens: int = 16) -> bytes:
    message = {"role": "user", "content": "Say something."}
    return json.dumps(
        {"model": model, "messages": [message], "max_tokens": tokens, "stream": stream}
    ).encode()


async def _chat(probe: Probe, conn: Connection, *, stream: bool, tokens: int = 16) -> Wire:
    """A whole chat completion request for the first model the target lists."""
    model = (await models_of(probe, conn))[0]
    data = _chat_body(model, stream=stream, tokens=tokens)
    return await request(probe, head("POST", CHAT, JSON), body(data), end(), conn=conn)


async def _served(probe: Probe, conn: Connection) -> str:
    """A GET /v1/models on `conn` is still answered whole: the connection is usable."""
    wire = await request(probe, head(), end(), conn=conn, label="next request")
    return complete(await read_response(wire), wire)


@case(
    "node/7.1/1",
    "serves GET /v1/models: response_head, body, end, finish",
    "The responder answers with `response_head`, `body` chunks, then `end`.",
    trusted=True,
)
async def get_models(probe: Probe) -> str:
    wire = await request(probe, head(), end())
    return complete(await read_response(wire), wire)


@case(
    "node/7.1/2",
    "reads a request body split into 16-byte frames, with an empty one among them",
    "An empty `data` is allowed.",
    trusted=True,
)
async def split_body(probe: Probe) -> str:
    conn = await peer_connection(probe)
    model = (await models_of(probe, conn))[0]
    data = _chat_body(model, stream=False, tokens=4)
    parts = [body(data[i : i + 16]) for i in range(0, len(data), 16)]
    parts.insert(1, body(b""))
    wire = await request(probe, head("POST", CHAT, JSON), *parts, end(), conn=conn)
    response = await read_response(wire)
    detail = complete(response, wire)
    if response.status != 200:
        raise CaseFailed(f"answered {response.status}: {response.body[:200]!r}", probe.evidence)
    return detail


@case(
    "node/7.1/3",
    "serves a streamed (SSE) chat completion: head, body frames, end",
    "Bodies are streamed",
    trusted=True,
)
async def streamed(probe: Probe) -> str:
    wire = await _chat(probe, await peer_connection(probe), stream=True)
    response = await read_response(wire)
    detail = complete(response, wire)
    if response.status != 200 or b"data:" not in response.body:
        raise CaseFailed(f"answered {response.status}: {response.body[:200]!r}", probe.evidence)
    return detail


@case(
    "node/7.1/4",
    "forwards a streamed body in several frames, not buffered whole",
    "a sender SHOULD forward each chunk as it becomes available rather than buffer the whole body",
    level=Level.SHOULD,
    trusted=True,
)
async def streamed_in_chunks(probe: Probe) -> str:
    wire = await _chat(probe, await peer_connection(probe), stream=True)
    response = await read_response(wire)
    complete(response, wire)
    if response.body_frames < 2:
        raise CaseFailed(f"the whole stream came in {response.body_frames} frame", probe.evidence)
    return f"{response.body_frames} body frames"


@case(
    "node/7.1/5",
    "accepts a request body frame of the largest size (1 MiB payload)",
    "A receiver MUST accept every frame up to 1 MiB.",
    trusted=True,
)
async def max_body_frame(probe: Probe) -> str:
    overhead = len(frame({"type": "body", "data": b"\0" * 70000})) - 4 - 70000
    big = body(b" " * (MIB - overhead))
    assert len(big) == MIB + 4
    wire = await request(probe, head("POST", CHAT, JSON), big, end())
    response = await read_response(wire)
    if response.error == ErrorCode.FRAME_TOO_LARGE:
        raise CaseFailed("a 1 MiB frame refused as too large", probe.evidence)
    return complete(response, wire)


@case(
    "node/7.1/6",
    "serves eight requests at once on one connection",
    "Each logical exchange is one bidirectional QUIC stream",
    trusted=True,
)
async def concurrent(probe: Probe) -> str:
    conn = await peer_connection(probe)
    results: list[str] = []

    async def one(i: int) -> None:
        wire = await request(probe, head(), end(), conn=conn, label=f"request {i}")
        results.append(complete(await read_response(wire), wire))

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
    return f"{len(results)} complete responses"


# --- the state table (§7.2) ------------------------------------------------------------


async def _refused(probe: Probe, row: Row) -> str:
    """`row.send`: the requester's frames after the preamble; `row.expect`: the error
    they must get."""
    wire = await request(probe, *row.send)
    return await expect_error(wire, row.expect)


_OUT_OF_TURN = (
    "A frame whose (state, sender, event) is not in the table MUST be treated as "
    "UNEXPECTED_MESSAGE."
)
UNEXPECTED = ErrorCode.UNEXPECTED_MESSAGE
_RESPONSE_HEAD = frame({"type": "response_head", "status": 200})
table(
    [
        Row(
            "node/7.2/1",
            "a body before the request head: UNEXPECTED_MESSAGE",
            _OUT_OF_TURN,
            send=[body(b"x")],
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/7.2/2",
            "end before the request head: UNEXPECTED_MESSAGE",
            _OUT_OF_TURN,
            send=[end()],
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/7.2/3",
            "a response_head from the requester: UNEXPECTED_MESSAGE",
            _OUT_OF_TURN,
            send=[_RESPONSE_HEAD],
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/7.2/4",
            "a second request_head: UNEXPECTED_MESSAGE",
            _OUT_OF_TURN,
            send=[head(), head()],
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/7.2/5",
            "a response_head from the requester after its head: UNEXPECTED_MESSAGE",
            _OUT_OF_TURN,
            send=[head("POST", CHAT, JSON), _RESPONSE_HEAD],
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/7.2/6",
            "a message tag from NodeControl on http_proxy: INVALID_MESSAGE",
            "a tag from another channel included",
            send=[frame({"type": "ping", "nonce": 1})],
            expect=ErrorCode.INVALID_MESSAGE,
            trusted=True,
        ),
        Row(
            "node/7.2/7",
            "a request_head with status-like junk (method of 33 characters): INVALID_MESSAGE",
            "a violated constraint (range, length, pattern)",
            send=[frame({"type": "request_head", "method": "G" * 33, "target": "/"})],
            expect=ErrorCode.INVALID_MESSAGE,
            trusted=True,
        ),
    ],
    _refused,
)


# --- truncation and cancellation (§4.3, §7.3) --------------------------------------------


@case(
    "node/4.3/3",
    "a requester that finishes before `end`: TRUNCATED, never served",
    "A receiver whose peer finishes in a state that `may_finish` does not list for the peer "
    "MUST treat the stream as TRUNCATED, and never as a successful exchange.",
    trusted=True,
)
async def requester_finishes_early(probe: Probe) -> str:
    wire = await request(probe, head("POST", CHAT, JSON), body(b"{"))
    await wire.finish()
    response = await read_response(wire)
    if response.status is not None and response.status < 300:
        raise CaseFailed(f"served a truncated request: {response.status}", probe.evidence)
    if response.error != ErrorCode.TRUNCATED:
        raise CaseFailed(
            f"expected error 105, got error {response.error}, status {response.status}, "
            f"stream {response.after}",
            probe.evidence,
        )
    return "error 105"


async def _stops(probe: Probe, wire: Wire) -> str:
    """After the requester cancelled: frames already in flight may still arrive, then the
    responder stops, ending the stream or falling silent (3 s without a frame), within
    10 s. A responder still sending body frames after that did not stop producing."""
    deadline = trio.current_time() + 10
    late = 0
    while trio.current_time() < deadline:
        with trio.move_on_after(3):
            item = await wire.frame()
            if isinstance(item, Ended):
                return f"{late} frame(s) in flight, then the stream {item}"
            late += 1
            continue
        return f"{late} frame(s) in flight, then silence"
    raise CaseFailed(f"still sending 10 s after the cancel ({late} frames)", probe.evidence)


@dataclass(frozen=True)
class Reset:
    """In a `_cancelled` row: reset the stream with this code."""

    code: int


async def _cancelled(probe: Probe, row: Row) -> str:
    """`row.send`: the request's first frames, sent at once, then a frame or a Reset
    that cancels it. The node must stop on a frame (no frame after it, `Wire.quiet`) and
    serve the next request on the same connection whole."""
    conn = await peer_connection(probe)
    *first, cancel = row.send
    wire = await request(probe, *first, conn=conn)
    if isinstance(cancel, Reset):
        await wire.reset(cancel.code)
        seen = "reset"
    else:
        await wire.send(cancel)
        seen = await wire.quiet()
    return f"{seen}; then {await _served(probe, conn)}"


_PARTIAL = [head("POST", CHAT, JSON), body(b'{"model"')]  # a request without its end
CANCELLED = ErrorCode.CANCELLED
table(
    [
        Row(
            "node/7.3/1",
            "a request cancelled by an error frame (CANCELLED) before its end is not served",
            "A requester cancels by sending `error` with code CANCELLED",
            send=[
                *_PARTIAL,
                frame({"type": "error", "code": CANCELLED, "message": "cancelled"}),
            ],
            trusted=True,
        ),
        Row(
            "node/7.3/2",
            "a request cancelled by a reset: the connection goes on serving",
            "or by resetting or stopping the stream.",
            send=[*_PARTIAL, Reset(CANCELLED)],
            trusted=True,
        ),
        Row(
            "node/9/2",
            "a requester's error with an unknown code (499) ends the exchange, not INVALID_MESSAGE",
            "MUST understand a code it does not know by its class",
            send=[
                head("POST", CHAT, JSON),
                frame({"type": "error", "code": 499, "message": "a newer code"}),
            ],
            trusted=True,
        ),
        Row(
            "node/2.3/1",
            "a request reset with an unknown code (12345): the connection goes on serving",
            'it MUST understand an unknown code by its class (§9), 0 as "no error".',
            send=[*_PARTIAL, Reset(12345)],
            trusted=True,
        ),
    ],
    _cancelled,
)


async def _mid_stream(probe: Probe, conn: Connection) -> tuple[Wire, Response]:
    """A long streamed chat completion, read up to its first body frame."""
    wire = await _chat(probe, conn, stream=True, tokens=4000)
    return wire, await read_response(wire, until_end=False, stop_after_body=True)


@case(
    "node/7.3/3",
    "a streamed response cancelled mid-way by CANCELLED after the request's end: it stops",
    "So a responder MUST keep reading the request half after `end`, until the response ends, "
    "to see a cancel",
    trusted=True,
)
async def cancel_streaming(probe: Probe) -> str:
    conn = await peer_connection(probe)
    wire, first = await _mid_stream(probe, conn)
    if first.ended or first.status is None:
        raise CaseFailed("the response ended before it could be cancelled", probe.evidence)
    await wire.send(frame({"type": "error", "code": ErrorCode.CANCELLED}))
    ended = await _stops(probe, wire)
    then = await _served(probe, conn)
    return f"cancelled after {first.body_frames} body frame(s); {ended}; then {then}"


@case(
    "node/7.3/4",
    "a streamed response cancelled mid-way by a reset: the connection goes on serving",
    "A responder that sees either MUST stop producing the response",
    trusted=True,
)
async def reset_streaming(probe: Probe) -> str:
    conn = await peer_connection(probe)
    wire, first = await _mid_stream(probe, conn)
    if first.status is None:
        raise CaseFailed("no response head", probe.evidence)
    await wire.reset(ErrorCode.CANCELLED)
    return f"reset after {first.body_frames} body frame(s); then {await _served(probe, conn)}"


@case(
    "node/7.2/8",
    "holds the response's end until the request's end, and lets the requester send it late",
    "A responder MUST NOT send the response's `end` before it has received the request's `end`",
    trusted=True,
)
async def end_after_end(probe: Probe) -> str:
    wire = await request(probe, head())
    response = Response()
    with trio.move_on_after(1.5):
        await read_response(wire, until_end=False, response=response)
    if response.ended or response.error is not None or response.after is not None:
        raise CaseFailed("the response ended before the request did", probe.evidence)
    # §7.2: the request half is not stopped early, so this `end` is written and read.
    await wire.send(end())
    return complete(await read_response(wire, response=response), wire)


@case(
    "node/7.5/1",
    "a request for an unknown model is answered by an HTTP response, not a StreamError",
    "When the request reaches the responder's HTTP layer, its answer is an HTTP response, "
    "error statuses included",
    trusted=True,
)
async def unknown_model(probe: Probe) -> str:
    data = _chat_body("conformance-no-such-model", stream=False)
    wire = await request(probe, head("POST", CHAT, JSON), body(data), end())
    response = await read_response(wire)
    return complete(response, wire)


@case(
    "node/7.2/9",
    "lets the requester send body frames and end a second after the response head",
    "A responder MUST NOT stop the request half (STOP_SENDING) before that half is `done` or "
    "the channel has failed",
    trusted=True,
)
async def late_request_end(probe: Probe) -> str:
    wire = await request(probe, head())
    response = Response()
    with trio.move_on_after(1.0):
        await read_response(wire, until_end=False, response=response)
    await wire.send(body(b""))
    await trio.sleep(0.5)
    await wire.send(end())  # a write error here: the request half was stopped
    return complete(await read_response(wire, response=response), wire)


@case(
    "node/3.4/10",
    "refuses an http_proxy frame over 1 MiB with a StreamError FRAME_TOO_LARGE",
    "A receiver MUST check the length against its maximum from the 4-byte header alone",
    trusted=True,
)
async def oversized_request(probe: Probe) -> str:
    wire = await request(probe, (MIB + 1).to_bytes(4, "big"))
    response = await read_response(wire)
    if response.error != ErrorCode.FRAME_TOO_LARGE:
        raise CaseFailed(
            f"expected StreamError 103, got error {response.error}, status {response.status}",
            probe.evidence,
        )
    return "StreamError 103"


@case(
    "node/7.1/7",
    "a Content-Length the node sends equals the length of the body frames' data",
    "when sent it MUST equal the total length of the `data` of the `body` frames.",
    trusted=True,
)
async def content_length(probe: Probe) -> str:
    conn = await peer_connection(probe)
    model = (await models_of(probe, conn))[0]
    seen = []
    for label, frames in (
        ("GET /v1/models", [head(), end()]),
        (
            "a chat completion",
            [head("POST", CHAT, JSON), body(_chat_body(model, stream=False)), end()],
        ),
    ):
        wire = await request(probe, *frames, conn=conn, label=label)
        response = await read_response(wire)
        complete(response, wire)  # checks Content-Length against the body, when sent
        sent = any(name.lower() == "content-length" for name, _ in response.headers)
        seen.append(f"{label}: {'checked' if sent else 'none sent'}")
    return "; ".join(seen)
