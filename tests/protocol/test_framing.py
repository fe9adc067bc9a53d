"""Preamble and frame codec: any split of valid input works; bad input raises typed errors."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.protocol import (
    EOF,
    NEED_DATA,
    ClientHelloReader,
    ErrorCode,
    FrameDecoder,
    LocalProtocolError,
    Preamble,
    PreambleReader,
    RemoteProtocolError,
    SniError,
    StreamType,
    encode_frame,
    encode_preamble,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# --- preamble ---------------------------------------------------------------


@pytest.mark.parametrize("stream_type", list(StreamType))
def test_preamble_byte_at_a_time(stream_type):
    data = encode_preamble(stream_type) + b"rest"
    reader = PreambleReader()
    results = [reader.receive_data(data[i : i + 1]) for i in range(8)]
    assert results[:7] == [NEED_DATA] * 7
    assert results[7] == Preamble(stream_type, version=1, minor=0)
    assert len(data) == 12
    # The four bytes after the preamble were not fed yet; feed them and read them back.
    reader2 = PreambleReader()
    assert reader2.receive_data(data) == Preamble(stream_type)
    assert reader2.trailing_data == b"rest"


def test_preamble_wire_layout():
    assert encode_preamble(StreamType.HTTP_PROXY).hex() == "4741544501000300"


def test_wrong_magic_fails_on_the_first_wrong_byte():
    reader = PreambleReader()
    with pytest.raises(RemoteProtocolError) as info:
        reader.receive_data(b"\x16")  # a TLS ClientHello sent to the wrong place
    assert info.value.code is ErrorCode.MALFORMED_PREAMBLE


def test_minor_version_and_reserved_byte_are_ignored():
    assert PreambleReader().receive_data(b"GATE\x01\x07\x02\xff") == Preamble(
        StreamType.RELAY_CONTROL, version=1, minor=7
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"GATE\x02\x00\x01\x00", ErrorCode.UNSUPPORTED_VERSION),
        (b"GATE\x00\x00\x01\x00", ErrorCode.UNSUPPORTED_VERSION),
        (b"GATE\x01\x00\x09\x00", ErrorCode.UNKNOWN_STREAM_TYPE),
        (b"GATE\x01\x00\x00\x00", ErrorCode.UNKNOWN_STREAM_TYPE),
        (b"HTTP/1.1", ErrorCode.MALFORMED_PREAMBLE),
    ],
)
def test_bad_preambles(data, code):
    with pytest.raises(RemoteProtocolError) as info:
        PreambleReader().receive_data(data)
    assert info.value.code is code


def test_stream_ending_inside_the_preamble():
    reader = PreambleReader()
    assert reader.receive_data(b"GAT") is NEED_DATA
    with pytest.raises(RemoteProtocolError) as info:
        reader.receive_data(b"")
    assert info.value.code is ErrorCode.TRUNCATED


def test_reading_past_the_preamble_is_a_local_error():
    reader = PreambleReader()
    reader.receive_data(encode_preamble(StreamType.NODE_CONTROL))
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"x")


# --- frames -----------------------------------------------------------------


def drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while True:
        frame = decoder.next_frame()
        if frame is NEED_DATA or frame is EOF:
            return frames
        frames.append(frame)


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_frames_survive_any_split(payloads, cuts):
    wire = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    got = []
    for piece in split_at(wire, cuts):
        decoder.receive_data(piece)
        got += drain(decoder)
    decoder.receive_data(b"")
    assert decoder.next_frame() is EOF
    assert got == payloads


def test_byte_at_a_time():
    wire = encode_frame(b"abc") + encode_frame(b"") + encode_frame(b"\x00" * 70000)
    decoder = FrameDecoder()
    got = []
    for i in range(len(wire)):
        decoder.receive_data(wire[i : i + 1])
        got += drain(decoder)
    assert got == [b"abc", b"", b"\x00" * 70000]
    assert decoder.buffered == 0


def test_oversized_frame_is_refused_from_its_header_alone():
    decoder = FrameDecoder(max_frame_size=16)
    decoder.receive_data((17).to_bytes(4, "big"))  # no payload sent: nothing is buffered
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_encoding_an_oversized_frame_is_a_local_error():
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(b"x" * 17, max_frame_size=16)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert encode_frame(b"x" * 16, max_frame_size=16)[:4] == b"\x00\x00\x00\x10"


@pytest.mark.parametrize("wire", [b"\x00", b"\x00\x00\x00\x05abc"])
def test_truncated_stream(wire):
    decoder = FrameDecoder()
    decoder.receive_data(wire)
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TRUNCATED


def test_data_after_eof_is_a_local_error():
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"x")


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=10))
def test_garbage_only_ever_raises_remote_protocol_error(garbage, cuts):
    """As h11's fuzz target: whatever the peer sends, only RemoteProtocolError escapes (and
    from the relay's SNI reader, fed the same, only SniError: more in test_sni.py)."""
    reader = PreambleReader()
    decoder = FrameDecoder(max_frame_size=64)
    try:
        for piece in split_at(garbage, cuts):
            if reader.receive_data(piece) is not NEED_DATA:
                break
        if reader.trailing_data:
            decoder.receive_data(reader.trailing_data)
            drain(decoder)
        decoder.receive_data(b"")
        drain(decoder)
    except RemoteProtocolError:
        pass
    sni = ClientHelloReader(max_size=64)
    try:
        for piece in split_at(garbage, cuts):
            if sni.feed(piece) is not None:
                break
    except SniError:
        pass
