"""Keepalives in a translated stream's silences (gate.services.gateway.keepalive).

The engine here is a stand-in whose chunks come after set pauses, on trio's MockClock
(virtual time, jumped whenever every task waits): the timing of the keepalives is the
subject, and no real engine can be made silent for exact lengths. The real engine's
case, a long prompt on llama.cpp, is tests/e2e/test_gateway.py's keepalive test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from openai._streaming import SSEDecoder as OpenAISSEDecoder

from gate.dialects import SSEDecoder
from gate.services.engines.client import StreamedResponse, UpstreamDisconnected
from gate.services.engines.registry import Provider
from gate.services.gateway.exchange import API_ROUTES, ApiError, Exchange
from gate.services.gateway.keepalive import EarlyOpening
from gate.services.gateway.response import AbortResponse
from gate.services.gateway.translated import chat_engine_to_responses_client, translated_response
from gate.services.http.router import cancel_on_disconnect

MESSAGES = next(e for e in API_ROUTES if e.path == "/v1/messages")
RESPONSES = next(e for e in API_ROUTES if e.path == "/v1/responses")
ENGINE = Provider(name="e", kind="llamacpp", base_url="http://127.0.0.1:9")
INTERVAL = 0.2


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


class SlowEngine(StreamedResponse):
    """An engine's SSE stream whose pieces come after the given pauses (seconds); an
    exception in place of bytes is the engine failing then."""

    def __init__(self, pieces: list[tuple[float, bytes | Exception]]) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"text/event-stream")]
        self.pieces = pieces

    async def aiter_body(self) -> AsyncGenerator[bytes, None]:
        for pause, piece in self.pieces:
            await trio.sleep(pause)
            if isinstance(piece, Exception):
                raise piece
            yield piece

    async def aclose(self) -> None:
        pass


# A prompt read for 1.3 s, two tokens 0.5 s apart, [DONE], then 1 s before the body ends.
SLOW_STREAM: list[tuple[float, bytes | Exception]] = [
    (1.3, chunk({"role": "assistant", "content": "Hi"})),
    (0.5, chunk({"content": " there"}, "stop")),
    (0.0, b"data: [DONE]\n\n"),
    (1.0, b""),
]


def relay(respond: Any, upstream: StreamedResponse) -> list[tuple[float, dict[str, Any]]]:
    """What the client got, each message with its (virtual) time."""
    sent: list[tuple[float, dict[str, Any]]] = []
    exchange = Exchange(MESSAGES, time.perf_counter(), model="m", stream=True, keepalive=INTERVAL)

    async def send(message: dict[str, Any]) -> None:
        sent.append((trio.current_time(), message))

    async def main() -> None:
        with trio.fail_after(30):  # virtual seconds
            try:
                await respond(upstream, send, exchange)
            except AbortResponse:
                sent.append((trio.current_time(), {"type": "aborted"}))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return sent


def bodies(sent: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, bytes]]:
    """The body parts, each checked to be whole events (a keepalive never splits one)."""
    parts = [(t, m["body"]) for t, m in sent if m["type"] == "http.response.body" and m["body"]]
    for _, body in parts:
        decoder = SSEDecoder()
        decoder.feed(body)
        assert body.endswith(b"\n\n") and decoder.finish() == [], body
    return parts


def test_an_anthropic_stream_pings_in_each_silence_and_never_after_its_last_event() -> None:
    sent = relay(translated_response(MESSAGES, ENGINE), SlowEngine(SLOW_STREAM))
    parts = bodies(sent)
    names = [
        (t, event.event) for t, body in parts for event in SSEDecoder().feed(body) if event.event
    ]
    # message_start and its ping at once, before the engine's first chunk.
    assert names[:2] == [(0.0, "message_start"), (0.0, "ping")]
    first_delta = next(i for i, (_, name) in enumerate(names) if name == "content_block_delta")
    pings = [t for t, name in names[2:first_delta] if name == "ping"]
    # One every INTERVAL of silence while the prompt is read (1.3 s: 6 of them)...
    assert pings == pytest.approx([INTERVAL * k for k in range(1, 7)]), pings
    second = [i for i, (_, name) in enumerate(names) if name == "content_block_delta"][1]
    # ...and between the two tokens (0.5 s apart: 2)...
    assert [name for _, name in names[first_delta + 1 : second]].count("ping") == 2
    # ...and none after message_stop, though the body stayed open another second.
    assert names[-1][1] == "message_stop"
    ping = b'event: ping\ndata: {"type":"ping"}\n\n'
    assert all(body == ping for _, body in parts[1:] if b"ping" in body)  # each alone
    assert sent[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_responses_stream_keeps_alive_with_comments_that_the_openai_sdk_skips() -> None:
    request = {"model": "m", "input": "hi", "stream": True}
    respond = chat_engine_to_responses_client(request, lambda _: None)
    parts = bodies(relay(respond, SlowEngine(SLOW_STREAM)))
    keepalives = [t for t, body in parts if body == b": keepalive\n\n"]
    assert len(keepalives) == 6 + 2, keepalives
    stream = b"".join(body for _, body in parts)
    # The official SDK's decoder, line by line as it reads: the comments are no event.
    decoder = OpenAISSEDecoder()
    types = [
        event.event
        for line in stream.decode().splitlines()
        if (event := decoder.decode(line)) is not None
    ]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed" and None not in types


def test_a_stream_whose_engine_fails_after_a_silence_ends_with_the_error_event() -> None:
    failing = SlowEngine([(0.5, UpstreamDisconnected("engine: connection closed"))])
    sent = relay(translated_response(MESSAGES, ENGINE), failing)
    events = [event.event for _, body in bodies(sent) for event in SSEDecoder().feed(body)]
    assert events == ["message_start", "ping", "ping", "ping", "error"]
    assert sent[-1][1] == {"type": "aborted"}


# --- a stream opened before its engine answers (keepalive.EarlyOpening) ----------------


def relay_late(
    respond: Any, upstream: StreamedResponse, head_after: float, keepalive: bytes = b""
) -> list[tuple[float, dict[str, Any]]]:
    """`relay`, with the engine's head coming `head_after` seconds after the request, as
    the pipeline relays such a stream: through an armed `EarlyOpening`, rung by the
    request's disconnect watcher (here a client that stays)."""

    async def stays() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def late(upstream: StreamedResponse, send: Any, exchange: Exchange) -> None:
        opening = EarlyOpening(send)
        try:
            async with trio.open_nursery() as nursery:
                watch = nursery.cancel_scope
                nursery.start_soon(cancel_on_disconnect, stays, watch, None, opening)
                opening.arm(keepalive or PING, INTERVAL, lambda: HEAD)
                await trio.sleep(head_after)  # the engine says nothing, head included
                await respond(upstream, opening.send, exchange)
                nursery.cancel_scope.cancel()
        except* ApiError as group:
            [error] = group.exceptions
            await send({"type": "failed", "error": error})

    return relay(late, upstream)


PING = b'event: ping\ndata: {"type":"ping"}\n\n'
HEAD = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def test_a_stream_opens_and_pings_while_its_engine_says_nothing_not_even_its_head() -> None:
    sent = relay_late(translated_response(MESSAGES, ENGINE), SlowEngine(SLOW_STREAM), 0.9)
    heads = [(t, m) for t, m in sent if m["type"] == "http.response.start"]
    # One head, the early one, after INTERVAL: not the translation's a second time.
    assert heads == [(pytest.approx(INTERVAL), {**heads[0][1], "status": 200, "headers": HEAD})]
    parts = bodies(sent)
    before = [t for t, body in parts if t < 0.9]  # the engine's head comes at 0.9 s
    assert all(body == PING for t, body in parts if t < 0.9)
    assert before == pytest.approx([INTERVAL * k for k in range(2, 5)]), before
    names = [event.event for _, body in parts for event in SSEDecoder().feed(body)]
    # The translation's own events follow, whole, from message_start to message_stop.
    assert names[3] == "message_start" and names[-1] == "message_stop"
    assert "content_block_delta" in names
    assert sent[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_stream_whose_engine_answers_in_time_is_not_opened_early() -> None:
    sent = relay_late(translated_response(MESSAGES, ENGINE), SlowEngine(SLOW_STREAM), 0.1)
    heads = [(t, m) for t, m in sent if m["type"] == "http.response.start"]
    assert len(heads) == 1 and heads[0][0] == pytest.approx(0.1)  # the translation's own
    assert (b"content-type", b"text/event-stream") in heads[0][1]["headers"]


class EngineError(StreamedResponse):
    """An engine's error answer: a status and a JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.headers = [(b"content-type", b"application/json")]
        self._body = msgspec.json.encode(body)

    async def aiter_body(self) -> AsyncGenerator[bytes, None]:
        yield self._body

    async def aclose(self) -> None:
        pass


def test_an_engine_error_after_the_early_opening_is_the_engines_error() -> None:
    refusal = EngineError(400, {"error": {"message": "Requested tokens exceed context window"}})
    sent = relay_late(translated_response(MESSAGES, ENGINE), refusal, 1.0)
    heads = [m for _, m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in heads] == [200]  # the 400 cannot go out after the head
    failed = sent[-1][1]
    assert failed["type"] == "failed"
    # The pipeline answers it after the head as every failed stream: the dialect's error
    # event, with the engine's status and words, then the abort (test_gateway's e2e case).
    assert failed["error"].status == 400
    assert "exceed context window" in failed["error"].message


def test_a_responses_stream_opened_early_keeps_alive_with_comments() -> None:
    request = {"model": "m", "input": "hi", "stream": True}
    respond = chat_engine_to_responses_client(request, lambda _: None)
    sent = relay_late(respond, SlowEngine(SLOW_STREAM), 0.9, b": keepalive\n\n")
    assert [m["status"] for _, m in sent if m["type"] == "http.response.start"] == [200]
    stream = b"".join(body for _, body in bodies(sent))
    assert stream.startswith(b": keepalive\n\n" * 3 + b"event: response.created\n")
    decoder = OpenAISSEDecoder()  # the official SDK's, line by line as it reads
    types = [e.event for line in stream.decode().splitlines() if (e := decoder.decode(line))]
    assert types[0] == "response.created" and types[-1] == "response.completed"
