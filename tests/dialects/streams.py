"""OpenAI chat.completion.chunk builders, and Hypothesis strategies for realistic streams
and for any chunk a stream may hold (well-formed or not)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **choice: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "llama",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **choice}],
    }


def text(value: str) -> dict[str, Any]:
    return chunk({"content": value})


def tool_start(index: int, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
    call = {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return chunk({"tool_calls": [call]})


def tool_args(index: int, fragment: str) -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "llama",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


ROLE = chunk({"role": "assistant", "content": ""})


json_values = st.integers(-5, 5) | st.text(max_size=4) | st.booleans() | st.none()


@st.composite
def realistic_streams(
    draw: st.DrawFn,
) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]], str | None]:
    """Text fragments, then tool calls whose fragments interleave in any order."""
    texts = draw(st.lists(st.text(min_size=1, max_size=6), max_size=4))
    tools = []
    for i in range(draw(st.integers(0, 3))):
        arguments = draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3))
        encoded = json.dumps(arguments)
        cuts = sorted(draw(st.lists(st.integers(1, max(1, len(encoded) - 1)), max_size=4)))
        pieces = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
        tools.append((f"call_{i}", f"fn_{i}", [p for p in pieces if p], arguments))
    slots = draw(
        st.permutations([i for i, tool in enumerate(tools) for _ in range(len(tool[2]) + 1)])
    )
    chunks = [text(t) for t in texts]
    sent = [0] * len(tools)
    for i in slots:  # a tool's first slot is its start; the others, its fragments in order
        call_id, name, pieces, _ = tools[i]
        chunks.append(
            tool_start(i, call_id, name) if sent[i] == 0 else tool_args(i, pieces[sent[i] - 1])
        )
        sent[i] += 1
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", None]))
    chunks.append(chunk(finish=finish))
    if draw(st.booleans()):
        chunks.append(usage(draw(st.integers(0, 99)), draw(st.integers(0, 99))))
    first_seen = sorted(range(len(tools)), key=slots.index)  # blocks follow first appearance
    expected = [{"id": tools[i][0], "name": tools[i][1], "input": tools[i][3]} for i in first_seen]
    return chunks, texts, expected, finish


# Any chunk, in any order: the translators must give a well-formed stream whatever comes.
any_chunk = st.one_of(
    st.text(max_size=3).map(text),
    st.builds(
        tool_start,
        st.integers(0, 3),
        st.sampled_from(["a", "b", ""]),
        st.sampled_from(["f", ""]),
        st.text(max_size=3),
    ),
    st.builds(tool_args, st.integers(0, 3), st.text(max_size=3)),
    st.sampled_from(["stop", "length", "tool_calls", "content_filter"]).map(
        lambda f: chunk(finish=f)
    ),
    st.builds(usage, st.integers(0, 9), st.integers(0, 9)),
    st.just(ROLE),
    st.just(chunk({"refusal": "no"})),
    st.just(chunk({"tool_calls": [{"id": "z", "function": {"name": "h", "arguments": "{"}}]})),
    st.just({"choices": [{"index": 2, "delta": {"content": "x"}}]}),
    st.just({"usage": None, "choices": None}),
)
