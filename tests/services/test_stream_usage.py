"""Gate's own question for a stream's usage stays hidden from the client (stream_usage).

The engine here cannot be real: llama-cpp-python, the engine the suite runs, ignores
include_usage. The bytes are an OpenAI API stream with include_usage as the API writes it
(`"usage":null` in every chunk, then a usage-only chunk with empty choices)."""

from __future__ import annotations

import json

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
