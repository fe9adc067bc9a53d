"""ClientHelloReader: real ClientHellos in any split and any record framing give their
name; anything else is refused with a typed SniError, and nothing else ever escapes."""

import contextlib
import json
import pathlib
import random
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gate.protocol.sni
from gate.protocol import (
    DEFAULT_MAX_CLIENT_HELLO,
    ClientHelloReader,
    ClientHelloTooLargeError,
    GateError,
    MalformedClientHelloError,
    NoServerNameError,
    NotClientHelloError,
    NotTlsError,
    SniError,
)
from spec.examples import client_hello, server_name_extension, tls_extension, tls_records
from tests.protocol.test_framing import split_at

VECTORS = json.loads(
    (pathlib.Path(__file__).resolve().parents[2] / "spec/vectors/client_hello.json").read_text()
)
CAPTURED = {v["name"]: v for v in VECTORS["captured"]}
CHROMIUM = bytes.fromhex(CAPTURED["headless Chromium"]["hex"])
PYTHON_SSL = bytes.fromhex(CAPTURED["Python ssl, TLS 1.3"]["hex"])
NAME = CAPTURED["headless Chromium"]["server_name"]
X25519MLKEM768 = 0x11EC
KEY_SHARE = 51


def read(pieces, max_size=DEFAULT_MAX_CLIENT_HELLO):
    """Feeds `pieces` in turn: the name, None, or the SniError raised."""
    reader = ClientHelloReader(max_size)
    result = None
    for piece in pieces:
        try:
            result = reader.feed(piece)
        except SniError as exc:
            return exc
        if result is not None:
            return result
    return result


def handshake_of(records: bytes) -> bytes:
    """The handshake bytes carried by well-formed `records` (the inverse of tls_records)."""
    out, at = b"", 0
    while at < len(records):
        length = int.from_bytes(records[at + 3 : at + 5], "big")
        out += records[at + 5 : at + 5 + length]
        at += 5 + length
    return out


def extensions_of(message: bytes) -> dict[int, bytes]:
    at = 4 + 2 + 32
    at += 1 + message[at]
    at += 2 + int.from_bytes(message[at : at + 2], "big")
    at += 1 + message[at] + 2
    found = {}
    while at < len(message):
        kind, length = (
            int.from_bytes(message[at : at + 2]),
            int.from_bytes(message[at + 2 : at + 4]),
        )
        found[kind] = message[at + 4 : at + 4 + length]
        at += 4 + length
    return found


# --- the captured ClientHellos ----------------------------------------------------------


def test_the_chromium_capture_is_a_current_browser_hello():
    """What the relay must handle today: ~2 KB, a post-quantum hybrid key share."""
    assert 1500 < len(CHROMIUM) < 4000
    key_share = extensions_of(handshake_of(CHROMIUM))[KEY_SHARE]
    groups, at = [], 2
    while at < len(key_share):
        groups.append(int.from_bytes(key_share[at : at + 2]))
        at += 4 + int.from_bytes(key_share[at + 2 : at + 4])
    assert X25519MLKEM768 in groups
    assert len(PYTHON_SSL) < 1000 and PYTHON_SSL[:3] == b"\x16\x03\x01"


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_captured_hellos_whole_and_byte_by_byte(name):
    data = bytes.fromhex(CAPTURED[name]["hex"])
    assert read([data]) == CAPTURED[name]["server_name"] == NAME
    reader = ClientHelloReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == NAME
    assert reader.received == data


def test_chromium_split_at_every_offset():
    for cut in range(len(CHROMIUM) + 1):
        assert read([CHROMIUM[:cut], CHROMIUM[cut:]]) == NAME, cut


@settings(max_examples=200)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=2000), max_size=30),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    version=st.sampled_from([0x0301, 0x0302, 0x0303]),
)
def test_chromium_reframed_in_records_of_any_size(sizes, cuts, version):
    wire = tls_records(handshake_of(CHROMIUM), sizes, version)
    reader = ClientHelloReader()
    pieces = split_at(wire, cuts)
    results = [reader.feed(piece) for piece in pieces]
    assert results[-1] == NAME
    assert set(results[:-1]) <= {None}
    assert reader.received == wire


def test_chromium_in_one_byte_records():
    wire = tls_records(handshake_of(CHROMIUM), [1] * len(CHROMIUM))
    assert len(wire) > 5 * len(handshake_of(CHROMIUM))
    assert read([wire]) == NAME


def test_the_hello_is_parsed_once_however_it_is_fed(monkeypatch):
    """Fed byte by byte, nothing is parsed again and again: the ClientHello once, at the end."""
    calls = []
    parse = gate.protocol.sni._server_name
    monkeypatch.setattr(
        gate.protocol.sni, "_server_name", lambda body: calls.append(1) or parse(body)
    )
    wire = tls_records(handshake_of(CHROMIUM), [100] * 30)
    assert read([wire[i : i + 1] for i in range(len(wire))]) == NAME
    assert calls == [1]


def test_bytes_after_the_hello_are_kept_for_the_node():
    """The relay forwards everything it read: early data or a CCS behind the ClientHello."""
    after = bytes.fromhex("140303000101") + bytes.fromhex("1703030004deadbeef")
    reader = ClientHelloReader()
    assert reader.feed(CHROMIUM[:100]) is None
    assert reader.feed(CHROMIUM[100:] + after) == NAME
    assert reader.feed(b"more") == NAME
    assert reader.received == CHROMIUM + after + b"more"


# --- OpenSSL, live: many names, TLS 1.3 and 1.2 ------------------------------------------


def openssl_hello(server_name: str, maximum: ssl.TLSVersion) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=50)
@given(
    labels=st.lists(LABEL, min_size=1, max_size=4),
    top=st.from_regex(r"[a-z][a-z0-9]{1,5}", fullmatch=True),
    maximum=st.sampled_from([ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]),
)
def test_openssl_hellos_give_their_name(labels, top, maximum):
    name = ".".join([*labels, top])
    assert read([openssl_hello(name, maximum)]) == name


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "error"),
    [
        (b"G", NotTlsError),  # GET
        (b"P", NotTlsError),  # POST, PROXY
        (b"S", NotTlsError),  # SSH-2.0
        (b"\x80", NotTlsError),  # SSLv2
        (b"\x15", NotClientHelloError),  # alert
        (b"\x14", NotClientHelloError),  # change_cipher_spec
        (b"\x17", NotClientHelloError),  # application data
        (b"\x16\x01", NotTlsError),
        (b"\x16\x03\x00", MalformedClientHelloError),
        (b"\x16\x03\x04", MalformedClientHelloError),
    ],
)
def test_refused_from_the_first_bytes(first, error):
    reader = ClientHelloReader()
    for byte in first[:-1]:
        assert reader.feed(bytes([byte])) is None
    with pytest.raises(error) as info:
        reader.feed(first[-1:])
    assert info.value.reason == error.reason


def test_a_refusal_sticks():
    reader = ClientHelloReader()
    with pytest.raises(NotTlsError) as first:
        reader.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(NotTlsError) as again:
        reader.feed(CHROMIUM)
    assert again.value is first.value


def test_oversize_is_refused_from_the_headers():
    """A bound is enforced before the bytes it refuses are waited for (or buffered)."""
    small = ClientHelloReader(max_size=1000)
    with pytest.raises(ClientHelloTooLargeError):
        small.feed(CHROMIUM[:5])  # the record header alone announces ~2 KB
    hello = handshake_of(CHROMIUM)
    reader = ClientHelloReader(max_size=len(hello) - 1)
    with pytest.raises(ClientHelloTooLargeError):
        reader.feed(tls_records(hello, [4])[:9])  # the handshake header, in a record of its own
    assert read([tls_records(hello, [4])], max_size=len(hello)) == NAME


@pytest.mark.parametrize(
    ("extensions", "reason"),
    [
        (None, "no_sni"),
        ([tls_extension(43, b"\x02\x03\x04")], "no_sni"),
        ([server_name_extension(b"192.168.1.1")], "ip_literal"),
        ([server_name_extension(b"fe80::1")], "ip_literal"),
        ([server_name_extension(b"a" * 64 + b".test")], "invalid_name"),
        ([server_name_extension(b"caf\xc3\xa9.test")], "invalid_name"),
    ],
)
def test_hellos_without_a_usable_name(extensions, reason):
    with pytest.raises(NoServerNameError) as info:
        ClientHelloReader().feed(tls_records(client_hello(extensions)))
    assert info.value.reason == reason


def test_error_labels_and_tree():
    for cls, reason in [
        (NotTlsError, "not_tls"),
        (NotClientHelloError, "not_client_hello"),
        (MalformedClientHelloError, "malformed"),
        (ClientHelloTooLargeError, "too_large"),
        (NoServerNameError, "no_sni"),
    ]:
        assert issubclass(cls, SniError) and issubclass(cls, GateError)
        assert cls("x").reason == reason
    assert NoServerNameError("x", "ip_literal").reason == "ip_literal"


def test_names_are_normalized():
    hello = tls_records(client_hello([server_name_extension(b"Node.Relay.TEST.")]))
    assert read([hello]) == "node.relay.test"
    longest = b".".join([b"a" * 63] * 3 + [b"b" * 61])  # 253 bytes: the most DNS allows
    assert read([tls_records(client_hello([server_name_extension(longest + b".")]))]) == (
        longest.decode()
    )


# --- only typed errors escape ------------------------------------------------------------


def only_typed(pieces, max_size=DEFAULT_MAX_CLIENT_HELLO):
    result = read(pieces, max_size)
    assert result is None or isinstance(result, (str, SniError)), repr(result)
    if isinstance(result, str):
        assert result == result.lower() and result.isascii() and not result.endswith(".")
    return result


@settings(max_examples=500)
@given(garbage=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_bytes(garbage, cuts):
    only_typed(split_at(garbage, cuts))
    only_typed(split_at(b"\x16\x03\x01" + garbage, cuts))  # past the first check
    only_typed([b"\x16\x03\x01" + len(garbage).to_bytes(2, "big") + garbage], max_size=300)


SAMPLES = [CHROMIUM, PYTHON_SSL] + [bytes.fromhex(v["hex"]) for v in VECTORS["valid"][:7]]


@settings(max_examples=500)
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.sampled_from(["flip", "set", "u16", "cut"])),
        min_size=1,
        max_size=4,
    ),
    value=st.integers(min_value=0, max_value=0xFFFF),
    cuts=st.lists(st.integers(min_value=0), max_size=5),
)
def test_mutated_hellos(sample, edits, value, cuts):
    """Truncated, bit-flipped, with a length (or any two bytes) changed: still only a name,
    None or an SniError."""
    data = bytearray(sample)
    for position, kind in edits:
        at = position % len(data)
        if kind == "flip":
            data[at] ^= 1 << (value % 8)
        elif kind == "set":
            data[at] = value & 0xFF
        elif kind == "u16":
            data[at : at + 2] = value.to_bytes(2, "big")
        else:
            del data[at:]
        if not data:
            return
    only_typed(split_at(bytes(data), cuts))


def test_every_length_field_of_chromium_changed():
    """Each byte of the capture set to 0x00 and 0xff: the parse survives every position."""
    rng = random.Random(7)
    for at in range(len(CHROMIUM)):
        for value in (0x00, 0xFF, rng.randrange(256)):
            data = bytearray(CHROMIUM)
            data[at] = value
            only_typed([bytes(data)])
