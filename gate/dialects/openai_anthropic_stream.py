"""OpenAI chat.completion.chunk dicts from an Anthropic Messages event stream.

Part of the OpenAI-client/Anthropic-API direction (see openai_anthropic.py, which
re-exports these names); a module of its own because it is the one state machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from gate.dialects._shared import STOP_TO_FINISH, dumps, dumps_bytes, openai_usage
from gate.dialects.errors import MalformedUpstream, TranslatorClosed, openai_stream_error

__all__ = ["SSE_DONE", "MessagesStreamToChatStream", "chat_sse_bytes"]

#: The last line of an OpenAI stream: sent after a normal end, never after an error.
SSE_DONE: Final = b"data: [DONE]\n\n"

#: Anthropic error types -> OpenAI's, for errors relayed mid-stream.
_ERROR_TYPES: Final = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
}


class MessagesStreamToChatStream:
    """Translates Anthropic stream events into OpenAI `chat.completion.chunk` dicts.

    Theory of operation
    -------------------
    The first chunk carries `delta.role = "assistant"` (and empty content), as
    OpenAI's does; text deltas become `delta.content`; a tool_use block becomes one
    tool call, numbered 0, 1, ... in block order: its start sends `id`, `type` and
    `function.name` with empty arguments, then each `input_json_delta` sends an
    `arguments` fragment. `message_delta` holds the stop reason and usage until
    `message_stop`, which sends the last chunk (empty delta, `finish_reason`) and,
    if the client asked for `stream_options.include_usage`, a usage chunk with empty
    `choices` (and every earlier chunk has `usage: null`, as OpenAI's do). The caller
    then writes SSE_DONE. An Anthropic `error` event, or `fail()`, yields an OpenAI
    error payload, and nothing may follow it. `ping`, thinking deltas, and event types
    this code does not know are skipped (Anthropic: "handle unknown event types
    gracefully").
    """

    def __init__(
        self, model: str, completion_id: str, *, created: int = 0, include_usage: bool = False
    ) -> None:
        self.model = model
        self.completion_id = completion_id
        self.created = created
        self.include_usage = include_usage
        self.done = False  #: message_stop, an error event or fail() was seen
        self.failed = False  #: an error event or fail(): SSE_DONE must not follow
        self._started = False
        self._tool_numbers: dict[int, int] = {}  # Anthropic block index -> OpenAI tool index
        self._stop_reason: Any = None
        self._usage: dict[str, Any] = {}

    def feed(self, event: str | None, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Translate one Anthropic event; returns the chunks to send, possibly none."""
        if self.done:
            raise TranslatorClosed("the stream already finished or failed")
        if not isinstance(data, Mapping):
            raise MalformedUpstream("a stream event's data is not a JSON object")
        name = event or data.get("type")
        if name == "error":
            error = data.get("error")
            error = error if isinstance(error, Mapping) else {}
            kind = error.get("type")
            kind = (
                _ERROR_TYPES.get(kind, "server_error") if isinstance(kind, str) else "server_error"
            )
            payload = openai_stream_error(str(error.get("message", "upstream error")), type=kind)
            self.done = self.failed = True
            return [payload]
        chunks = self._begin()
        if name == "message_start":
            message = data.get("message")
            if isinstance(message, Mapping) and isinstance(message.get("usage"), Mapping):
                self._usage.update(message["usage"])
        elif name == "content_block_start":
            self._block_start(data, chunks)
        elif name == "content_block_delta":
            self._block_delta(data, chunks)
        elif name == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, Mapping):
                self._stop_reason = delta.get("stop_reason")
            usage = data.get("usage")
            if isinstance(usage, Mapping):  # cumulative counts: later values win
                self._usage.update({k: v for k, v in usage.items() if v is not None})
        elif name == "message_stop":
            stop = self._stop_reason
            finish = STOP_TO_FINISH.get(stop, "stop") if isinstance(stop, str) else "stop"
            self.done = True
            chunks.append(self._chunk({}, finish))
            if self.include_usage:
                chunks.append(self._base([], openai_usage(self._usage)))
        return chunks

    def fail(self, message: str) -> list[dict[str, Any]]:
        """The upstream failed mid-stream: an error payload, and nothing after it."""
        if self.done:
            raise TranslatorClosed("the stream already finished or failed")
        self.done = self.failed = True
        return [openai_stream_error(message)]

    def _begin(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: Mapping[str, Any], chunks: list[dict[str, Any]]) -> None:
        block = data.get("content_block")
        if not isinstance(block, Mapping):
            return
        if block.get("type") == "text" and block.get("text"):
            chunks.append(self._chunk({"content": block["text"]}))
        elif block.get("type") == "tool_use":
            number = self._tool_numbers[data.get("index", -1)] = len(self._tool_numbers)
            arguments = dumps(block["input"]) if block.get("input") else ""
            call = {
                "index": number,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": arguments},
            }
            chunks.append(self._chunk({"tool_calls": [call]}))

    def _block_delta(self, data: Mapping[str, Any], chunks: list[dict[str, Any]]) -> None:
        delta = data.get("delta")
        if not isinstance(delta, Mapping):
            return
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            chunks.append(self._chunk({"content": delta["text"]}))
        elif kind == "input_json_delta" and delta.get("partial_json"):
            number = self._tool_numbers.get(data.get("index", -1))
            if number is not None:
                call = {"index": number, "function": {"arguments": delta["partial_json"]}}
                chunks.append(self._chunk({"tool_calls": [call]}))

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._base([choice], None)

    def _base(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        return chunk


def chat_sse_bytes(chunks: Iterable[Mapping[str, Any]]) -> bytes:
    """OpenAI's wire form of chunks: `data: <compact JSON>\\n\\n` each, no event names."""
    return b"".join([b"data: " + dumps_bytes(chunk) + b"\n\n" for chunk in chunks])
