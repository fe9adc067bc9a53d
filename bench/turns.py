"""Measuring in turns: the ways a benchmark compares (Gate and a baseline, one path and
another) measured alternately, so that this shared machine's drift (another process's
load, CPU frequency) falls on each of them alike rather than on whichever came last."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def turn_order(names: Sequence[T], turn: int) -> list[T]:
    """`names` in order on even turns and reversed on odd ones: none always goes first."""
    return list(names) if turn % 2 == 0 else list(reversed(names))


def taking_turns(
    names: Sequence[str],
    count: int,
    one: Callable[[str], float],
    *,
    block: int,
    warmup: int,
    time_limit: float,
) -> dict[str, list[float]]:
    """`one(name)`'s samples (seconds), after `warmup` calls each: the names take turns
    in blocks of `block` calls until each has `count`, or `time_limit` seconds pass."""
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        for _ in range(warmup):
            one(name)
    stop = time.monotonic() + time_limit
    turn = 0
    while min(len(s) for s in samples.values()) < count and time.monotonic() < stop:
        for name in turn_order(names, turn):
            samples[name].extend(one(name) for _ in range(block))
        turn += 1
    return samples
