"""Benchmark of the streaming hot path: SSE decoding and stream translation.

Not a test (pytest does not collect it): run it by hand. It belongs with bench/ and
may move there. Prints µs per event next to the openai SDK's own SSE decoder,
measured in the same run, because the machine is shared and noisy.

    .venv/bin/python tests/dialects/bench_dialects.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import msgspec

from gate.dialects import (
    ChatStreamToMessagesStream,
    MessagesStreamToChatStream,
    SSEDecoder,
    chat_sse_bytes,
    sse_bytes,
)

N = 20_000  # events per stream
ROUNDS = 5


def chunk(n: int) -> dict[str, object]:
    delta = {"content": f" token{n}"}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    return {
        "id": "chatcmpl-8x7Yk2Qq3hR5",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "qwen2.5-coder-32b-instruct",
        "system_fingerprint": "b4567",
        "choices": [choice],
    }


CHUNKS = [chunk(n) for n in range(N)]
OPENAI_WIRE = chat_sse_bytes(CHUNKS)  # what an OpenAI-dialect engine sends
EVENTS = [e for c in CHUNKS for e in ChatStreamToMessagesStream("m", "msg_1").feed(c)]
ANTHROPIC_WIRE = sse_bytes(
    [e for e in EVENTS if e[0] == "content_block_delta"]
)  # event: + data: lines, as Anthropic sends them
EVENT_SIZES = [len(b) + 2 for b in OPENAI_WIRE.split(b"\n\n") if b]
PER_EVENT = [e + b"\n\n" for e in OPENAI_WIRE.split(b"\n\n") if e]


def best(fn: Callable[[], object], count: int) -> float:
    """Best of ROUNDS, in µs per event."""
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) / count * 1e6


def ours_per_read(reads: list[bytes]) -> Callable[[], object]:
    def run() -> int:
        decoder = SSEDecoder()
        total = 0
        for read in reads:
            total += len(decoder.feed(read))
        return total + len(decoder.finish())

    return run


def sdk_per_read(reads: list[bytes]) -> Callable[[], object] | None:
    try:
        from openai._streaming import SSEDecoder as SDKDecoder
    except ImportError:
        return None
    return lambda: sum(1 for _ in SDKDecoder().iter_bytes(iter(reads)))


def translate_chunks() -> None:
    """Hot path for an Anthropic client: engine bytes -> JSON -> events -> bytes."""
    decoder, translator = SSEDecoder(), ChatStreamToMessagesStream("m", "msg_1")
    decode = msgspec.json.Decoder().decode
    for read in PER_EVENT:
        for event in decoder.feed(read):
            sse_bytes(translator.feed(decode(event.data)))


def translate_events() -> None:
    """Hot path for an OpenAI client: Anthropic bytes -> JSON -> chunks -> bytes."""
    decoder, translator = SSEDecoder(), MessagesStreamToChatStream("m", "chatcmpl-1")
    decode = msgspec.json.Decoder().decode
    reads = [e + b"\n\n" for e in ANTHROPIC_WIRE.split(b"\n\n") if e]
    for read in reads:
        for event in decoder.feed(read):
            chat_sse_bytes(translator.feed(event.event, decode(event.data)))


def main() -> None:
    print(f"{N} OpenAI chunk events, median {statistics.median(EVENT_SIZES)} bytes each\n")
    cases = [
        ("one event per read", PER_EVENT),
        ("64 KiB reads", [OPENAI_WIRE[i : i + 65536] for i in range(0, len(OPENAI_WIRE), 65536)]),
        ("1 KiB reads", [OPENAI_WIRE[i : i + 1024] for i in range(0, len(OPENAI_WIRE), 1024)]),
        ("7-byte reads", [OPENAI_WIRE[i : i + 7] for i in range(0, len(OPENAI_WIRE), 7)]),
    ]
    print(f"{'SSE decode':<24}{'gate µs/event':>14}{'openai SDK':>12}{'ratio':>8}")
    for name, reads in cases:
        ours = best(ours_per_read(reads), N)
        sdk = sdk_per_read(reads)
        theirs = best(sdk, N) if sdk else float("nan")
        print(f"{name:<24}{ours:>14.2f}{theirs:>12.2f}{theirs / ours:>7.1f}x")
    print()
    print(f"{'full hot path (decode+JSON+translate+encode)':<48}{'µs/event':>10}")
    print(f"{'  OpenAI engine -> Anthropic client':<48}{best(translate_chunks, N):>10.2f}")
    n_events = ANTHROPIC_WIRE.count(b"\n\n")
    print(f"{'  Anthropic API -> OpenAI client':<48}{best(translate_events, n_events):>10.2f}")


if __name__ == "__main__":
    main()
