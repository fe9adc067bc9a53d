"""Gate's own question for a stream's usage stays hidden from the client (stream_usage).

The engine here cannot be real: llama-cpp-python, the engine the suite runs, ignores
include_usage. The bytes are an OpenAI API stream with include_usage as the API writes it
(`"usage":null` in every chunk, then a usage-only chunk with empty choices)."""

from __future__ import annotations

import json
import random
import time

from gate.services.gateway.stream_usage import UsageStrip, ask_for_usage

CHUNK = '{"id":"c1","object":"chat.completion.chunk","choices":[%s],"usage":null}'
DELTA = '{"index":0,"delta":{"content":"%s"},"finish_reason":null}'
ASKED = (
    "".join(f"data: {CHUNK % (DELTA % c)}\n\n" for c in "abc")
    + 'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
    '"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\n\n'
    "data: [DONE]\n\n"
).encode()
PLAIN = CHUNK.replace(',"usage":null', "")
UNASKED = ("".join(f"data: {PLAIN % (DELTA % c)}\n\n" for c in "abc") + "data: [DONE]\n\n").encode()


def test_the_client_gets_the_stream_it_would_have_got_without_the_question():
    for size in (1, 7, 64, len(ASKED)):  # however the engine's writes fall
        strip = UsageStrip()
        pieces = [ASKED[i : i + size] for i in range(0, len(ASKED), size)]
        assert b"".join(strip.feed(p) for p in pieces) + strip.rest() == UNASKED


def test_the_question_is_asked_only_when_the_client_did_not_ask_its_own():
    asked = ask_for_usage(b'{"model":"m","stream":true}')
    assert asked is not None
    assert json.loads(asked)["stream_options"] == {"include_usage": True}
    assert ask_for_usage(b'{"model":"m","stream_options":{"include_usage":false}}') is None
    assert ask_for_usage(b"[1]") is None and ask_for_usage(b"{") is None


def test_blank_lines_of_either_kind_split_anywhere_are_found():
    crlf = ASKED.replace(b"\n\n", b"\r\n\r\n")
    mixed = b"".join(
        event + (b"\r\n\r\n" if i % 2 else b"\n\n")
        for i, event in enumerate(ASKED.split(b"\n\n")[:-1])
    )
    rng = random.Random(13)
    for stream in (crlf, mixed):
        whole = UsageStrip()
        expected = whole.feed(stream) + whole.rest()
        assert b'"usage"' not in expected and expected.count(b"data: ") == 4
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 40)))
            pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
            strip = UsageStrip()
            assert b"".join(strip.feed(p) for p in pieces) + strip.rest() == expected


def _seconds(feed_all) -> float:
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        feed_all()
        best = min(best, time.perf_counter() - began)
    return best


def test_the_time_grows_with_the_stream_not_with_its_square():
    # A node relays large answers in pieces of any size: each byte is looked at a
    # bounded number of times. (Before: every piece was joined to the unfinished event
    # and searched from its start, and each event of a piece searched to the piece's
    # end: a third of a node's time on a large streamed answer.) Four times the bytes
    # must cost about four times the time; the old code took sixteen.
    def events(count: int) -> bytes:
        return b"".join(f"data: {CHUNK % (DELTA % i)}\n\n".encode() for i in range(count))

    def in_one_piece(stream: bytes):
        return lambda: UsageStrip().feed(stream)

    def byte_by_byte(event: bytes):
        def run() -> None:
            strip = UsageStrip()
            for i in range(len(event)):
                strip.feed(event[i : i + 1])

        return run

    small, large = events(2_000), events(8_000)
    ratio = _seconds(in_one_piece(large)) / _seconds(in_one_piece(small))
    assert ratio < 8, ratio
    small, large = b"data: " + b"x" * 20_000, b"data: " + b"x" * 80_000
    ratio = _seconds(byte_by_byte(large)) / _seconds(byte_by_byte(small))
    assert ratio < 8, ratio
