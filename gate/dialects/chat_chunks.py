"""What the two translators of an OpenAI engine's chat.completion.chunk stream share:
into Anthropic's events (anthropic_openai_stream.py) and into the Responses API's
(responses_chat_stream.py). A module of its own so that the loop over a chunk's pieces,
the stream's opening, and which tool call a fragment belongs to have one copy.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from gate.dialects._shared import ChunkReading, fragment_index, read_chat_chunk
from gate.dialects.errors import TranslatorClosed
from gate.dialects.sse import Event

__all__ = ["ChatChunkTranslator"]


class _StreamedCall(Protocol):
    call_id: str


_Call = TypeVar("_Call", bound=_StreamedCall)


class ChatChunkTranslator(abc.ABC, Generic[_Call]):
    """Translates a stream of OpenAI `chat.completion.chunk`s into a client's named events.

    `start()` gives the opening events (`_opening`), at most once and at the latest with
    the first `feed()`; `feed()` reads each chunk's choice 0 and hands its pieces, in
    order, to `_text` and `_tool`, and its finish_reason to `_finish_reason_came`;
    `finish()` ([DONE]) and `fail()` end the stream, and nothing may be fed after them.
    `KEEPALIVE` is what may go out in the stream's silences, between whole events.
    The usage chunk that `include_usage` brings is kept in `_usage`; an engine that
    reports no usage on a stream (llama-cpp-python) has its deltas, one token each,
    counted in `_deltas` instead, with `input_tokens_hint` as the input.
    """

    KEEPALIVE: ClassVar[bytes]

    def __init__(self, input_tokens_hint: int) -> None:
        self.input_tokens_hint = input_tokens_hint
        self._started = False
        self._closed = False
        self._calls: dict[int, _Call] = {}  # by the chunk's tool_calls[].index
        self._last_call_index = 0
        self._finish_reason: Any = None
        self._usage: Any = None
        self._deltas = 0

    @property
    def done(self) -> bool:
        """Whether the stream finished or failed: nothing more may be fed."""
        return self._closed

    def start(self) -> list[Event]:
        """The opening events, before the engine's first chunk ([] once they went)."""
        return self._begin()

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """Translate one chunk; returns the events to send, possibly none."""
        events = self._begin()
        read = read_chat_chunk(chunk)
        if read.usage is not None:
            self._usage = read.usage
        for kind, value in read.pieces:
            self._deltas += 1
            if kind == "text":
                self._text(value, events)
            else:
                self._tool(value, events)
        if read.finish_reason:
            self._finish_reason = read.finish_reason
            self._finish_reason_came(read, events)
        return events

    @abc.abstractmethod
    def finish(self) -> list[Event]:
        """The upstream stream completed ([DONE]): the closing events."""

    @abc.abstractmethod
    def fail(self, message: str) -> list[Event]:
        """The upstream failed mid-stream: the dialect's error event, and nothing after it."""

    @abc.abstractmethod
    def _opening(self) -> list[Event]:
        """The events that open the stream."""

    @abc.abstractmethod
    def _text(self, text: str, events: list[Event]) -> None:
        """A text (or refusal) delta: append what it becomes to `events`."""

    @abc.abstractmethod
    def _tool(self, fragment: Mapping[str, Any], events: list[Event]) -> None:
        """A `tool_calls` fragment: append what it becomes to `events`."""

    def _finish_reason_came(self, read: ChunkReading, events: list[Event]) -> None:
        """A chunk carried the finish_reason (now in `_finish_reason`)."""

    def _check_open(self) -> None:
        if self._closed:
            raise TranslatorClosed("the stream already finished or failed")

    def _begin(self) -> list[Event]:
        if self._started and not self._closed:  # every chunk but the first: no call
            return []
        self._check_open()
        self._started = True
        return self._opening()

    def _call_of(self, fragment: Mapping[str, Any]) -> tuple[int, _Call | None, Mapping[str, Any]]:
        """The tool call index `fragment` belongs to, its call (None: a new one), and the
        fragment's `function` ({} when it has none)."""
        known = (c.call_id for c in self._calls.values())
        index = fragment_index(fragment, known, len(self._calls), self._last_call_index)
        self._last_call_index = index
        function = fragment.get("function")
        return index, self._calls.get(index), function if isinstance(function, Mapping) else {}
