"""Token counts for streamed requests whose engine does not volunteer them.

An OpenAI stream carries usage only when the client asks (`stream_options.include_usage`).
When the client did not, Gate asks for it anyway (`ask_for_usage`) and keeps the answer
from the client (`UsageStrip`): the usage-only chunk that ends the stream and the
`"usage":null` the OpenAI API puts in every other chunk, so the client receives what it
would have without Gate's question. An engine that ignores the question (llama-cpp-python)
gets its prompt counted after the stream by its tokenizer (`count_unreported`, through
`gate.services.engines.tokens`), or estimated, and the usage record says which
(`Exchange.tokens_source`).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from gate.services.engines.client import UpstreamClient
from gate.services.engines.registry import Provider
from gate.services.engines.tokens import count_prompt_tokens, estimate_tokens, prompt_text
from gate.services.gateway.exchange import Exchange

__all__ = ["UsageStrip", "ask_for_usage", "count_unreported"]

_USAGE_NULL: Final = (b',"usage":null', b'"usage":null,', b', "usage": null', b'"usage": null, ')


def ask_for_usage(body: bytes) -> bytes | None:
    """`body` with `stream_options.include_usage` set, or None when it cannot be (not a
    JSON object, or the client set stream_options itself)."""
    try:
        request = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(request, dict) or request.get("stream_options") is not None:
        return None
    request["stream_options"] = {"include_usage": True}
    return msgspec.json.encode(request)


class UsageStrip:
    """Takes the engine's stream in whatever pieces it arrives, gives it back event by
    event without what the client did not ask for (see the module's doc).

    Linear in the stream's size however it is cut: a piece is searched once, with the 3
    bytes before it (where a blank line may begin), and the pieces of an unfinished event
    are joined once, when it ends. A node relaying a large answer spent a third of its
    time here when every piece was joined to the rest and searched from the start."""

    __slots__ = ("_pending", "_tail")

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # the unfinished event, as it came
        self._tail = b""  # its last 3 bytes

    def feed(self, chunk: bytes) -> bytes:
        window = self._tail + chunk
        end = max(window.rfind(b"\n\n"), window.rfind(b"\r\n\r\n"))
        if end < 0:
            if chunk:
                self._pending.append(chunk)
            self._tail = window[-3:]
            return b""
        end += 4 if window[end : end + 4] == b"\r\n\r\n" else 2
        cut = end - len(self._tail)  # > 0: what came before holds no whole blank line
        events = b"".join([*self._pending, chunk[:cut]])
        rest = chunk[cut:]
        self._pending = [rest] if rest else []
        self._tail = rest[-3:]
        if b'"usage"' not in events:  # the common case: nothing to strip
            return events
        return b"".join(_strip(event) for event in _events(events))

    def rest(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        rest = b"".join(self._pending)
        self._pending, self._tail = [], b""
        return _strip(rest)


def _events(data: bytes) -> list[bytes]:
    """Whole events, each with its terminating blank line. Each kind of blank line is
    searched for again only once the cut has passed the last one found."""
    out, start = [], 0
    lf, crlf = data.find(b"\n\n"), data.find(b"\r\n\r\n")
    while start < len(data):
        if 0 <= lf < start:
            lf = data.find(b"\n\n", start)
        if 0 <= crlf < start:
            crlf = data.find(b"\r\n\r\n", start)
        end = min(i for i in (lf, crlf) if i >= 0)
        end += 4 if end == crlf else 2
        out.append(data[start:end])
        start = end
    return out


def _strip(event: bytes) -> bytes:
    if b'"usage"' not in event:
        return event
    if b'"choices":[]' in event or b'"choices": []' in event:
        return b""  # the usage-only chunk
    for pattern in _USAGE_NULL:
        event = event.replace(pattern, b"")
    return event


async def count_unreported(
    client: UpstreamClient,
    provider: Provider,
    body: bytes,
    exchange: Exchange,
    response_timeout: float,
) -> None:
    """After a stream that reported no prompt tokens: count the prompt with the engine's
    tokenizer, or estimate it. Only while the engine has nothing else in flight:
    llama-cpp-python ends a running stream when another request comes, a tokenizer call
    included; with others in flight the count is estimated."""
    try:
        request: Any = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return
    if not isinstance(request, dict):
        return
    text = prompt_text(request)
    if isinstance(request.get("prompt"), str):  # /v1/completions
        text = request["prompt"]
    if provider.in_flight > 1:
        exchange.tokens_in = estimate_tokens(text)
        exchange.tokens_source = "estimate"
        return
    count, exact = await count_prompt_tokens(
        client, provider, exchange.model, text, response_timeout
    )
    exchange.tokens_in = count
    exchange.tokens_source = "counted" if exact else "estimate"
