import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.protocol import NodeId, key_problem


@given(st.binary(min_size=32, max_size=32))
def test_text_form_round_trips_and_fits_a_dns_label(key):
    node = NodeId(key)
    text = str(node)
    assert len(text) == 52 <= 63  # one DNS label (RFC 1035)
    assert text == text.lower() and text.isalnum()
    assert NodeId.parse(text) == node
    assert NodeId.parse(text.upper()) == node
    assert NodeId.parse(node.hex()) == node  # the form iroh prints


def test_non_canonical_spelling_is_rejected():
    text = str(NodeId(bytes(32)))  # all zero: last character carries 4 unused bits
    assert text.endswith("a")
    with pytest.raises(ValueError, match="not a node id"):
        NodeId.parse(text[:-1] + "b")


@pytest.mark.parametrize("bad", ["", "abc", "0" * 63, "1" * 52, "a" * 53, "z" * 64])
def test_garbage_is_rejected(bad):
    with pytest.raises(ValueError, match="not a node id"):
        NodeId.parse(bad)


def test_wrong_key_length():
    with pytest.raises(ValueError, match="32 bytes"):
        NodeId(b"\x01" * 31)


def test_immutable_hashable_and_short_is_only_for_display():
    a = NodeId(os.urandom(32))
    with pytest.raises(AttributeError):
        a._key = b""  # type: ignore[misc]
    assert {a: 1}[NodeId(a.bytes)] == 1
    assert str(a).startswith(a.short()) and len(a.short()) < len(str(a))


# The 8 points of small order, as encoded (libsodium's blocklist of Ed25519 public keys):
# no node can hold one of them as its key.
SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # the identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4: "a" * 52
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]


@pytest.mark.parametrize("encoded", SMALL_ORDER)
def test_small_order_points_are_no_node_key(encoded):
    node = NodeId.parse(encoded)  # a well-spelled id...
    assert key_problem(node.bytes) == "a point of small order, which no node's key can be"
    assert not node.usable  # ...that names no node


def test_the_all_a_id_is_a_small_order_point():
    assert not NodeId.parse("a" * 52).usable


@pytest.mark.parametrize(
    "encoded",
    [
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1
        "0100000000000000000000000000000000000000000000000000000000000080",  # x = 0, sign 1
    ],
)
def test_non_canonical_encodings_are_no_node_key(encoded):
    assert key_problem(bytes.fromhex(encoded)) == "not a canonical encoding of a curve point"


def test_bytes_off_the_curve_are_no_node_key():
    # y = 2: x^2 = (y^2 - 1) / (d y^2 + 1) has no root mod p (checked here by Euler's
    # criterion, apart from the code under test).
    p = 2**255 - 19
    d = -121665 * pow(121666, p - 2, p) % p
    x2 = 3 * pow(4 * d + 1, p - 2, p) % p
    assert pow(x2, (p - 1) // 2, p) == p - 1  # a non-residue
    assert key_problem((2).to_bytes(32, "little")) == "not a point of the Ed25519 curve"


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32))
def test_every_real_public_key_is_usable(seed):
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert key_problem(key) is None and NodeId(key).usable
