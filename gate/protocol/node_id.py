"""NodeId: a node's Ed25519 public key, and its text form that fits one DNS label.

iroh prints an endpoint id as 64 hex characters, one more than a DNS label may hold
(RFC 1035: 63). Gate's canonical text form is lowercase RFC 4648 base32 without
padding: 52 characters of [a-z2-7], so `<node-id>.<relay-domain>` carries the whole
key and two nodes can never share a name (spec §2.1). The hex form is accepted on
input because that is what iroh tools print.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Final

import msgspec

__all__ = ["NODE_ID_PATTERN", "NodeId", "NodeIdStr", "key_problem"]

_KEY_BYTES: Final = 32
_BASE32_LEN: Final = 52
# 51 characters carry 255 bits; the 52nd carries the last bit and four zero bits, so it
# can only be "a" (0) or "q" (16). The pattern thus admits exactly the canonical spelling.
NODE_ID_PATTERN: Final = r"^[a-z2-7]{51}[aq]$"
_BASE32_RE: Final = re.compile(NODE_ID_PATTERN)
_HEX_RE: Final = re.compile(r"^[0-9a-fA-F]{64}$")

#: A node id as it appears on the wire and in config: the canonical base32 text form.
NodeIdStr = Annotated[
    str,
    msgspec.Meta(
        pattern=NODE_ID_PATTERN,
        description="Ed25519 public key, lowercase RFC 4648 base32 without padding",
    ),
]


class NodeId:
    """An immutable 32-byte Ed25519 public key with a DNS-safe text form."""

    __slots__ = ("_key",)
    _key: bytes

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError(f"a node id is {_KEY_BYTES} bytes, got {len(key)}")
        object.__setattr__(self, "_key", bytes(key))

    @classmethod
    def parse(cls, text: str) -> NodeId:
        """Parse the base32 form (canonical) or the 64-character hex form that iroh prints."""
        text = text.strip()
        if _BASE32_RE.match(text.lower()):
            padded = text.upper() + "=" * (-len(text) % 8)
            try:
                node = cls(base64.b32decode(padded))
            except (binascii.Error, ValueError):
                node = None
            # 256 bits leave 4 unused bits in the last character: only one spelling
            # per key is accepted, or two names could denote one node.
            if node is not None and str(node) == text.lower():
                return node
        elif _HEX_RE.match(text):
            return cls(bytes.fromhex(text))
        raise ValueError(
            f"not a node id: {text[:80]!r} (expected {_BASE32_LEN} base32 characters "
            "or 64 hex characters)"
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NodeId is immutable")

    @property
    def usable(self) -> bool:
        """Whether some node can hold this key: see `key_problem`."""
        return key_problem(self._key) is None

    @property
    def bytes(self) -> bytes:
        return self._key

    def hex(self) -> str:
        """The form iroh prints for an endpoint id."""
        return self._key.hex()

    def short(self) -> str:
        """A prefix for humans to read in logs; never use it as a name (spec §2.1)."""
        return str(self)[:10]

    def __str__(self) -> str:
        return base64.b32encode(self._key).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"NodeId({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeId) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)


# --- whether 32 bytes are a public key some node can hold -------------------------------
#
# Any 32 bytes spell a node id, but not every node id names a node: the bytes must decode
# to a point of the Ed25519 curve (RFC 8032 §5.1.3), and that point must not be of small
# order. The 8 small-order points (the all-zero id, "a" * 52, is one) have no secret key
# that a node could hold, and any signature "verifies" under some of them, so trusting
# one trusts nobody in particular, or anybody. Decoding the point, rather than comparing
# with a list of 8 encodings, also refuses non-canonical encodings and bytes that are not
# a point at all. Pure integer arithmetic: a handful of modular powers, ~0.9 ms.

_P: Final = 2**255 - 19
_D: Final = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)


def key_problem(key: bytes) -> str | None:
    """Why `key` cannot be a node's Ed25519 public key, or None when it can."""
    if len(key) != _KEY_BYTES:
        return f"a public key is {_KEY_BYTES} bytes"
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    sign = key[31] >> 7
    if y >= _P:
        return "not a canonical encoding of a curve point"
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if (v * x * x - u) % _P != 0:
        x = x * _SQRT_M1 % _P
        if (v * x * x - u) % _P != 0:
            return "not a point of the Ed25519 curve"
    if x == 0 and sign:
        return "not a canonical encoding of a curve point"
    if x % 2 != sign:
        x = _P - x
    for _ in range(3):  # [8]P: the identity exactly for the 8 points of small order
        x, y = _double(x, y)
    if x == 0 and y == 1:
        return "a point of small order, which no node's key can be"
    return None


def _double(x: int, y: int) -> tuple[int, int]:
    """P + P with the complete addition law of -x^2 + y^2 = 1 + d x^2 y^2 (no exceptions:
    the denominators never vanish on the curve)."""
    xy = x * y % _P
    dxy = _D * xy * xy % _P
    x2 = 2 * xy * pow(1 + dxy, _P - 2, _P) % _P
    y2 = (y * y + x * x) * pow(1 - dxy, _P - 2, _P) % _P
    return x2, y2
