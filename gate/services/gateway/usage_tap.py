"""Token usage read off a relayed response as it passes, without holding it up (`UsageTap`)."""

from __future__ import annotations

from typing import Final

import msgspec

from gate.dialects import SSEDecoder
from gate.services.engines.registry import Dialect

__all__ = ["UsageTap"]

_MAX_USAGE_SCAN: Final = 8 * 1024 * 1024  # a non-streamed body larger than this is not parsed


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None  # OpenAI
    completion_tokens: int | None = None
    input_tokens: int | None = None  # Anthropic
    output_tokens: int | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[msgspec.Raw] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _WithUsage(msgspec.Struct):
    """Just enough of a response, chunk or event to count tokens."""

    usage: _Usage | None = None
    message: _WithUsage | None = None  # Anthropic's message_start nests it
    choices: list[_Choice] = []  # OpenAI stream chunks


_decode_usage = msgspec.json.Decoder(_WithUsage).decode

# What closes a stream, besides OpenAI chat's `data: [DONE]`: Anthropic's last event and
# the Responses API's terminal ones.
_CLOSING_EVENTS: Final = frozenset(
    {"message_stop", "response.completed", "response.incomplete", "response.failed"}
)


class UsageTap:
    """Reads token counts off a relayed response without holding it up.

    A non-streamed body is kept (up to a bound) and its `usage` decoded at the end. On a
    stream each event is decoded into a struct of the few fields that matter; when the
    engine reports no usage (an OpenAI stream without include_usage), the chunks that
    carry content or tool-call deltas are counted instead: one per token on the engines
    Gate fronts.
    """

    __slots__ = (
        "_body",
        "_decoder",
        "_size",
        "_tokens_seen",
        "ended",
        "reported",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self, dialect: Dialect, streaming: bool) -> None:
        self._decoder = SSEDecoder() if streaming else None
        self._body: list[bytes] = []
        self._size = 0
        self._tokens_seen = 0
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        self.reported = False  # the engine reported usage (else the counts are Gate's)
        self.ended = False  # the stream's closing event went by: the client has it all

    def feed(self, chunk: bytes) -> None:
        if self._decoder is None:
            self._size += len(chunk)
            if self._size <= _MAX_USAGE_SCAN:
                self._body.append(chunk)
            return
        for event in self._decoder.feed(chunk):
            if event.data == "[DONE]" or event.event in _CLOSING_EVENTS:
                self.ended = True
            if event.data and event.data != "[DONE]":
                self._take(event.data)

    def _take(self, data: str | bytes) -> None:
        try:
            parsed = _decode_usage(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return  # not for us to judge: the client gets the engine's bytes as they are
        for choice in parsed.choices:
            delta = choice.delta
            if delta is not None and (delta.content or delta.tool_calls):
                self._tokens_seen += 1
        usage = parsed.usage or (parsed.message.usage if parsed.message else None)
        if usage is None:
            return
        self.reported = True
        tokens_in = usage.prompt_tokens if usage.prompt_tokens is not None else usage.input_tokens
        tokens_out = (
            usage.completion_tokens if usage.completion_tokens is not None else usage.output_tokens
        )
        self.tokens_in = tokens_in if tokens_in is not None else self.tokens_in
        self.tokens_out = tokens_out if tokens_out is not None else self.tokens_out

    def result(self) -> tuple[int | None, int | None]:
        if self._decoder is None and self._body and self._size <= _MAX_USAGE_SCAN:
            self._take(b"".join(self._body))
        if self.tokens_out is None and self._tokens_seen:
            return self.tokens_in, self._tokens_seen
        return self.tokens_in, self.tokens_out
