import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gate.protocol import NodeId


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
