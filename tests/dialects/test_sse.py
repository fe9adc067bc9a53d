"""The SSE codec against the WHATWG event-stream rules, whole, byte at a time and split."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.dialects import MalformedUpstream, SSEDecoder, SSEEvent, encode_event


def decode(data: bytes, pieces: list[int] | None = None) -> list[SSEEvent]:
    """Feed `data` in pieces of the given sizes (the rest as one), then finish."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    pos = 0
    for size in pieces or ():
        events += decoder.feed(data[pos : pos + size])
        pos += size
    events += decoder.feed(data[pos:])
    return events + decoder.finish()


def bytewise(data: bytes) -> list[SSEEvent]:
    return decode(data, [1] * len(data))


E = SSEEvent

CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("one event", b"data: hi\n\n", [E(None, "hi")]),
    ("named", b"event: ping\ndata: {}\n\n", [E("ping", "{}")]),
    ("CRLF", b"event: a\r\ndata: x\r\n\r\n", [E("a", "x")]),
    ("CR", b"event: a\rdata: x\r\r", [E("a", "x")]),
    ("mixed endings", b"data: 1\r\ndata: 2\rdata: 3\n\n", [E(None, "1\n2\n3")]),
    ("multi-line data", b"data: a\ndata: b\n\n", [E(None, "a\nb")]),
    ("no space after colon", b"data:x\n\n", [E(None, "x")]),
    ("only one space stripped", b"data:  x\n\n", [E(None, " x")]),
    ("empty data", b"data:\n\n", [E(None, "")]),
    ("field without colon", b"data\ndata\n\n", [E(None, "\n")]),
    ("comment", b": keep-alive\ndata: x\n\n", [E(None, "x")]),
    ("only comments: nothing", b":a\n:b\n\n", []),
    ("event without data: nothing", b"event: x\n\ndata: y\n\n", [E(None, "y")]),
    (
        "type resets after dispatch",
        b"event: a\ndata: 1\n\ndata: 2\n\n",
        [E("a", "1"), E(None, "2")],
    ),
    ("empty event name is default", b"event:\ndata: x\n\n", [E(None, "x")]),
    ("unknown field ignored", b"foo: bar\ndata: x\n\n", [E(None, "x")]),
    ("colon in value", b'data: {"a":"b:c"}\n\n', [E(None, '{"a":"b:c"}')]),
    ("id persists", b"id: 7\ndata: a\n\ndata: b\n\n", [E(None, "a", "7"), E(None, "b", "7")]),
    (
        "id with NUL ignored",
        b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n",
        [E(None, "a", "1"), E(None, "b", "1")],
    ),
    ("BOM dropped once", b"\xef\xbb\xbfdata: x\n\n", [E(None, "x")]),
    ("second BOM kept", b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", []),
    ("UTF-8", "data: héllo ✓ 🎉\n\n".encode(), [E(None, "héllo ✓ 🎉")]),
    ("invalid UTF-8 replaced", b"data: a\xffb\n\n", [E(None, "a\ufffdb")]),
    ("blank lines alone", b"\n\n\r\n\r", []),
    ("[DONE]", b"data: [DONE]\n\n", [E(None, "[DONE]")]),
    # finish(): an event cut off by the end of the stream is still dispatched (our choice)
    ("unterminated event", b"data: x\n", [E(None, "x")]),
    ("unterminated line", b"data: [DONE]", [E(None, "[DONE]")]),
    ("unterminated CR", b"data: x\r", [E(None, "x")]),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decodes_whole_and_byte_at_a_time(data: bytes, expected: list[SSEEvent]) -> None:
    assert decode(data) == expected
    assert bytewise(data) == expected


def test_events_are_returned_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b") == [E(None, "a")]
    assert decoder.feed(b"\n\n") == [E(None, "b")]
    assert decoder.finish() == []


def test_crlf_split_across_feeds_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The LF completes the CRLF: it must not count as a second (blank) line.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [E(None, "a")]


def test_retry_is_kept_when_all_digits() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\nretry: x1\nretry:\n\n")
    assert decoder.retry == 1500


def test_finish_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 1\nevent: a\ndata: x")
    assert decoder.finish() == [E("a", "x", "1")]
    assert decoder.feed(b"\xef\xbb\xbfdata: y\n\n") == [E(None, "y")]


# Bytes drawn from the pieces SSE is made of, so that structure actually turns up.
sse_like = st.lists(
    st.sampled_from(
        [
            *(b"data", b"event", b"id", b"retry", b":", b" ", b"x", b"7"),
            *(b"\n", b"\r", b"\r\n"),
            *(b"\xef\xbb\xbf", b"\xc3", b"\xa9", b"\0"),  # BOM, a split "é", NUL
        ]
    ),
    max_size=60,
).map(b"".join)


@given(st.binary(max_size=200) | sse_like, st.lists(st.integers(0, 40), max_size=20))
def test_any_split_of_any_bytes_gives_the_same_events(data: bytes, pieces: list[int]) -> None:
    assert decode(data, pieces) == decode(data)


def reference(data: bytes) -> list[SSEEvent]:
    """The WHATWG algorithm written plainly, as an oracle (plus our EOF dispatch)."""
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    events, buffer, kind, last_id = [], None, "", None
    for line in [*re.split("\r\n|\r|\n", text), ""]:
        if not line:
            if buffer is not None:
                events.append(E(kind or None, buffer, last_id))
            buffer, kind = None, ""
            continue
        field, colon, value = line.partition(":")
        if colon and not field:
            continue
        value = value.removeprefix(" ")
        if field == "data":
            buffer = value if buffer is None else buffer + "\n" + value
        elif field == "event":
            kind = value
        elif field == "id" and "\0" not in value:
            last_id = value
    return events


@given(st.binary(max_size=200) | sse_like)
def test_agrees_with_a_plain_reference_implementation(data: bytes) -> None:
    assert decode(data) == reference(data)


names = st.none() | st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=8
)
payloads = st.text(max_size=40)


@given(
    st.lists(st.tuples(payloads, names), max_size=6),
    st.lists(st.integers(0, 30), max_size=30),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_encode_then_decode_round_trips(
    events: list[tuple[str, str | None]], pieces: list[int], newline: str
) -> None:
    wire = b"".join(encode_event(data, name) for data, name in events)
    decoded = decode(wire, pieces)
    expected = [
        E(name or None, data.replace("\r\n", "\n").replace("\r", "\n")) for data, name in events
    ]
    assert decoded == expected
    # The same stream with another line ending decodes to the same events.
    assert decode(wire.replace(b"\n", newline.encode())) == expected


def test_encode_event_forms() -> None:
    assert encode_event("x") == b"data: x\n\n"
    assert encode_event(b'{"a":1}', "message_start") == b'event: message_start\ndata: {"a":1}\n\n'
    assert encode_event("a\nb") == b"data: a\ndata: b\n\n"
    assert encode_event("") == b"data: \n\n"
    with pytest.raises(ValueError):
        encode_event("x", "bad\nname")


def test_agrees_with_the_openai_sdk_decoder() -> None:
    """The openai SDK's own decoder reads what we encode the same way."""
    streaming = pytest.importorskip("openai._streaming")
    wire = encode_event("a\nb", "x") + encode_event('{"k": "é"}') + encode_event("[DONE]")
    theirs = [
        (e.event, e.data)
        for e in streaming.SSEDecoder().iter_bytes(iter([wire[:7], wire[7:30], wire[30:]]))
    ]
    assert theirs == [(e.event, e.data) for e in decode(wire)]


def test_a_long_line_in_small_pieces() -> None:
    payload = "x" * 100_000 + "é"
    wire = encode_event(payload, "big")
    assert decode(wire, [100] * (len(wire) // 100)) == [E("big", payload)]


@pytest.mark.parametrize(
    "wire",
    [b"data: " + b"x" * 200, b"data: " + b"x" * 200 + b"\n", b"data: xxxxxxxx\n" * 30],
    ids=["unterminated line", "line, no blank line", "many data lines"],
)
def test_an_upstream_cannot_make_us_buffer_without_bound(wire: bytes) -> None:
    for pieces in ([], [7] * (len(wire) // 7)):
        with pytest.raises(MalformedUpstream):
            decoder = SSEDecoder(max_event_size=100)
            pos = 0
            for size in [*pieces, len(wire)]:
                decoder.feed(wire[pos : pos + size])
                pos += size
    assert SSEDecoder(max_event_size=300).feed(b"data: " + b"x" * 200 + b"\n\n")
