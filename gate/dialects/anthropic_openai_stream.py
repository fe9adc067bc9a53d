"""Anthropic stream events from an OpenAI engine's chat.completion.chunk stream.

Part of the Anthropic-client/OpenAI-engine direction (see anthropic_openai.py, which
re-exports these names); a module of its own because it is the one state machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from gate.dialects._shared import (
    ChunkReading,
    anthropic_usage,
    is_json_object,
    stop_reason_from_finish,
)
from gate.dialects.chat_chunks import ChatChunkTranslator
from gate.dialects.errors import anthropic_stream_error
from gate.dialects.sse import Event, sse_bytes

__all__ = ["ChatStreamToMessagesStream", "Event", "sse_bytes"]

#: Anthropic's keepalive event, which its API sends at the start and in a stream's silences.
_PING: Final[Event] = ("ping", {"type": "ping"})


@dataclass(slots=True)
class _ToolCall:
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    closed: bool = False


class ChatStreamToMessagesStream(ChatChunkTranslator[_ToolCall]):
    """Translates a stream of OpenAI `chat.completion.chunk`s into Anthropic stream events.

    Theory of operation
    -------------------
    Anthropic's grammar (docs "Streaming messages"): `message_start`, then for each
    content block `content_block_start`, deltas, `content_block_stop`, with indices
    0, 1, 2... and blocks never interleaved; then one `message_delta` (stop reason,
    usage) and `message_stop`. OpenAI's chunks carry text deltas and tool-call
    fragments keyed by `tool_calls[].index`, and the fragments of parallel calls may
    interleave. So:

    * text opens a text block; a first fragment of a tool call opens a tool_use block;
      switching kind closes the open block;
    * only one tool call streams live, in the open block; a call that starts while
      another is open is queued (first come, first served) and its fragments are
      buffered;
    * when a new call starts and the open call's arguments so far are a complete
      JSON object, the open call is done (nothing valid can follow a complete
      object): its block closes and the first queued call takes over, its buffer
      sent as one delta and the rest live. Sequential calls, which is what engines
      send, thus all stream live; interleaved ones are reordered, never lost;
    * when the message ends (or text follows tool calls) every queued call is emitted
      whole: start, one delta, stop. A fragment for a call whose block has closed
      cannot be placed and is dropped: that takes a call whose arguments continue
      after a complete object, or after text that came later;
    * `finish_reason` closes the blocks, but `message_delta` waits for `finish()`
      ([DONE]), because with `include_usage` the token counts come in a last chunk
      after it;
    * `fail()` emits Anthropic's `error` event and nothing else, ever after.

    `message_start` (and a `ping`, as Anthropic sends) go out with `start()` or the
    first call; `KEEPALIVE` (a `ping`) may go between any two events after it.
    Only choice 0 is translated (Anthropic has no `n`).
    """

    KEEPALIVE: ClassVar[bytes] = sse_bytes([_PING])

    def __init__(self, model: str, message_id: str, input_tokens_hint: int = 0) -> None:
        super().__init__(input_tokens_hint)
        self.model = model
        self.message_id = message_id
        self._next_index = 0
        self._text_open = False
        self._live: _ToolCall | None = None  # the tool call whose block is open
        self._queued: list[_ToolCall] = []
        self._matched_stop: Any = None

    def _finish_reason_came(self, read: ChunkReading, events: list[Event]) -> None:
        self._matched_stop = read.stop_reason
        self._close_blocks(events)

    def finish(self) -> list[Event]:
        """The upstream stream completed ([DONE]): close blocks, report stop and usage."""
        events = self._begin()
        self._close_blocks(events)
        stop_reason, stop_sequence = stop_reason_from_finish(
            self._finish_reason, has_tool_calls=bool(self._calls), matched_stop=self._matched_stop
        )
        # message_delta usage is cumulative, so it may restate the input counts.
        if self._usage is None:
            usage = {"input_tokens": self.input_tokens_hint, "output_tokens": self._deltas}
        else:
            usage = anthropic_usage(self._usage)
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        self._closed = True  # last: if the engine's values made this raise, fail() still works
        return events

    def fail(self, message: str, error_type: str = "api_error") -> list[Event]:
        """The upstream failed mid-stream: the `error` event, and nothing after it."""
        self._check_open()
        self._closed = True
        return [anthropic_stream_error(message, error_type)]

    def _opening(self) -> list[Event]:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens_hint, "output_tokens": 0},
        }
        return [
            ("message_start", {"type": "message_start", "message": message}),
            _PING,
        ]

    def _text(self, text: str, events: list[Event]) -> None:
        if not self._text_open:
            self._close_blocks(events)
            self._start_block({"type": "text", "text": ""}, events)
            self._text_open = True
        delta = {"type": "text_delta", "text": text}
        events.append(_delta(self._next_index - 1, delta))

    def _tool(self, fragment: Mapping[str, Any], events: list[Event]) -> None:
        index, call, function = self._call_of(fragment)
        if call is None:
            call_id = fragment.get("id") or f"toolu_{self.message_id}_{index}"
            call = self._calls[index] = _ToolCall(call_id, function.get("name") or "")
            if self._text_open:
                self._close_blocks(events)
            self._retire_complete_calls(events)
            if self._live is None:
                self._open_tool(call, events)
            else:
                self._queued.append(call)
        elif not call.name and isinstance(function.get("name"), str):
            call.name = function["name"]  # only a queued call can still take its name
        arguments = function.get("arguments")
        if not isinstance(arguments, str) or not arguments or call.closed:
            return
        call.arguments.append(arguments)
        if call is self._live:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append(_delta(self._next_index - 1, delta))

    def _open_tool(self, call: _ToolCall, events: list[Event]) -> None:
        block = {"type": "tool_use", "id": call.call_id, "name": call.name, "input": {}}
        self._start_block(block, events)
        self._live = call

    def _start_block(self, block: dict[str, Any], events: list[Event]) -> None:
        index = self._next_index
        self._next_index += 1
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )

    def _retire_complete_calls(self, events: list[Event]) -> None:
        """Close the live call while its arguments are complete; the next queued one
        goes live, with what it has buffered so far."""
        while self._live is not None and is_json_object("".join(self._live.arguments)):
            self._stop_block(events)
            if self._queued:
                call = self._queued.pop(0)
                self._open_tool(call, events)
                if call.arguments:
                    delta = {"type": "input_json_delta", "partial_json": "".join(call.arguments)}
                    events.append(_delta(self._next_index - 1, delta))

    def _close_blocks(self, events: list[Event]) -> None:
        """Close the open block, then emit every queued tool call whole."""
        if self._text_open or self._live is not None:
            self._stop_block(events)
        for call in self._queued:
            self._open_tool(call, events)
            if call.arguments:
                delta = {"type": "input_json_delta", "partial_json": "".join(call.arguments)}
                events.append(_delta(self._next_index - 1, delta))
            self._stop_block(events)
        self._queued.clear()

    def _stop_block(self, events: list[Event]) -> None:
        events.append(
            ("content_block_stop", {"type": "content_block_stop", "index": self._next_index - 1})
        )
        if self._live is not None:
            self._live.closed = True
        self._live = None
        self._text_open = False


def _delta(index: int, delta: dict[str, Any]) -> Event:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
