"""The conversations kept for previous_response_id: chains, bounds, expiry, ownership."""

from __future__ import annotations

from gate.services.gateway.conversations import Conversations


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def turn(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_chain_resolves_to_every_turn_in_order() -> None:
    kept = Conversations()
    kept.keep("r1", "me", None, [turn("a"), turn("b")])
    kept.keep("r2", "me", "r1", [turn("c")])
    kept.keep("r3", "me", "r2", [turn("d")])
    assert kept.history("r3", "me") == [turn("a"), turn("b"), turn("c"), turn("d")]
    assert kept.history("r1", "me") == [turn("a"), turn("b")]


def test_unknown_ids_and_other_clients_find_nothing() -> None:
    kept = Conversations()
    kept.keep("r1", "me", None, [turn("a")])
    assert kept.history("nope", "me") is None
    assert kept.history("r1", "someone else") is None


def test_a_missing_link_loses_the_conversation() -> None:
    kept = Conversations(max_responses=2)
    kept.keep("r1", "me", None, [turn("a")])
    kept.keep("r2", "me", "r1", [turn("b")])
    kept.keep("x", "me", None, [turn("x")])  # the third: r1, least recently used, goes
    assert "r1" not in kept and len(kept) == 2
    assert kept.history("r2", "me") is None


def test_using_a_chain_keeps_it_and_idle_ones_expire() -> None:
    clock = Clock()
    kept = Conversations(max_idle=10.0, clock=clock)
    kept.keep("r1", "me", None, [turn("a")])
    kept.keep("r2", "me", "r1", [turn("b")])
    kept.keep("other", "me", None, [turn("o")])
    clock.now = 8.0
    assert kept.history("r2", "me") is not None  # touches r1 and r2
    clock.now = 15.0
    assert kept.history("r2", "me") == [turn("a"), turn("b")]
    assert "other" not in kept  # idle since 0
    clock.now = 26.0
    assert kept.history("r2", "me") is None and len(kept) == 0


def test_the_byte_bound() -> None:
    kept = Conversations(max_bytes=100)
    kept.keep("big", "me", None, [turn("x" * 200)])  # alone over the bound: not kept
    assert "big" not in kept and kept.bytes == 0
    for n in range(5):
        kept.keep(f"r{n}", "me", None, [turn("y" * 20)])
    assert kept.bytes <= 100 and "r4" in kept and "r0" not in kept
