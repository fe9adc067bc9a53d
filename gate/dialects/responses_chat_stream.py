"""Responses API stream events from an OpenAI engine's chat.completion.chunk stream, and
the Responses objects both the whole and the streamed translation build.

Part of the Responses-client/Chat-engine direction (see responses_chat.py, which
re-exports these names); a module of its own because it is the one state machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from gate.dialects._shared import as_int, dumps
from gate.dialects.chat_chunks import ChatChunkTranslator
from gate.dialects.sse import SSE_KEEPALIVE, Event

__all__ = [
    "ChatStreamToResponsesStream",
    "assistant_turn",
    "incomplete_reason",
    "output_function_call",
    "output_message",
    "response_object",
    "responses_usage",
]

#: The request settings a response object repeats, with OpenAI's defaults.
_ECHOED: Final[dict[str, Any]] = {
    "instructions": None,
    "max_output_tokens": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": None,
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


def incomplete_reason(finish_reason: Any) -> str | None:
    """Why a reply is incomplete in Responses' terms (cut by the token cap or a filter),
    or None when it is complete."""
    return _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None


def response_object(
    request: Mapping[str, Any],
    *,
    response_id: str,
    model: str,
    created_at: int,
    status: str,
    output: Sequence[Mapping[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete_reason: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A `response` object: the fields the SDK's `Response` requires, the request's
    settings echoed as OpenAI does, and the outcome."""
    result: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None if error is None else {"code": "server_error", "message": error},
        "incomplete_details": None if incomplete_reason is None else {"reason": incomplete_reason},
        "model": model,
        "output": list(output),
        "usage": usage,
    }
    for key, default in _ECHOED.items():
        value = request.get(key)
        result[key] = default if value is None else value
    return result


def output_message(
    item_id: str, text: str, refusal: str = "", status: str = "completed"
) -> dict[str, Any]:
    """An assistant `message` output item: an output_text part, a refusal part, or both."""
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append(_text_part(text))
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def output_function_call(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def responses_usage(input_tokens: int, output_tokens: int, usage: Any = None) -> dict[str, Any]:
    """Responses usage; `usage`, the engine's chat usage if any, gives the details
    (cached prompt tokens, reasoning tokens)."""
    usage = usage if isinstance(usage, Mapping) else {}
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = (
        as_int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, Mapping) else 0
    )
    reasoning = (
        as_int(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, Mapping)
        else 0
    )
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def assistant_turn(output: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The chat message a response's output amounts to, for the conversation kept for
    `previous_response_id`; None when the output is empty."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in output:
        if item.get("type") == "message":
            for part in item.get("content") or ():
                text = part.get("text", part.get("refusal"))
                if isinstance(text, str):
                    texts.append(text)
        elif item.get("type") == "function_call":
            function = {"name": item.get("name", ""), "arguments": item.get("arguments", "")}
            calls.append({"id": item.get("call_id", ""), "type": "function", "function": function})
    if not texts and not calls:
        return None
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


@dataclass(slots=True)
class _Call:
    output_index: int
    item_id: str
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class ChatStreamToResponsesStream(ChatChunkTranslator[_Call]):
    """Translates a stream of OpenAI `chat.completion.chunk`s into Responses stream events.

    Theory of operation
    -------------------
    The Responses grammar (API reference "Streaming events", as the official SDKs'
    ResponseStreamState reads it): `response.created` and `response.in_progress` (the
    response, status in_progress, no output yet); then output items, each at its own
    `output_index` (0, 1, 2...): `response.output_item.added`, its content, then
    `response.output_item.done` with the whole item. A `message` item's content is
    `response.content_part.added`, `response.output_text.delta`s,
    `response.output_text.done`, `response.content_part.done`; a `function_call` item's
    is `response.function_call_arguments.delta`s and `.done`. Last comes
    `response.completed` (or `response.incomplete` when the reply was cut at
    max_output_tokens) with the whole response and its usage. Every event carries its
    `type` and a `sequence_number` counting from 0.

    Chat chunks carry text deltas and tool-call fragments keyed by `tool_calls[].index`.
    Text opens a message item (closing any open function_call items); the first fragment
    of a call opens a function_call item (closing an open message item), and its later
    fragments stream into it live. Calls whose fragments interleave stay open side by
    side, each at its own output_index, which the SDKs accumulate by. A fragment for a
    call already closed (arguments continuing after text came) cannot be placed and is
    dropped. Refusal deltas stream as text. `finish()` ([DONE]) closes what is open and
    emits the terminal event, after the usage chunk `include_usage` brings; an engine
    that reports no usage on a stream (llama-cpp-python) has its deltas, one token
    each, counted as the output tokens, and `input_tokens_hint` as the input.
    `fail()` emits `response.failed` with the error and nothing else, ever after.
    Only choice 0 is translated.
    """

    def __init__(
        self,
        request: Mapping[str, Any],
        *,
        response_id: str,
        model: str,
        created_at: int,
        input_tokens_hint: int = 0,
    ) -> None:
        super().__init__(input_tokens_hint)
        self.request = request
        self.response_id = response_id
        self.model = model
        self.created_at = created_at
        #: The final response object, once `finish()` built it.
        self.response: dict[str, Any] | None = None
        self._sequence = 0
        self._output: dict[int, dict[str, Any]] = {}  # finished items by output_index
        self._next_index = 0
        self._message: tuple[int, str] | None = None  # the open message: index, item id
        self._message_text: list[str] = []
        self._open_calls: list[_Call] = []

    #: The Responses grammar has no keepalive event: an SSE comment, which parsers skip.
    KEEPALIVE: ClassVar[bytes] = SSE_KEEPALIVE

    def finish(self) -> list[Event]:
        """The upstream stream completed ([DONE]): close the items, then the terminal
        event with the whole response."""
        events = self._begin()
        self._close_message(events)
        self._close_calls(events)
        reason = incomplete_reason(self._finish_reason)
        if self._usage is None:
            usage = responses_usage(self.input_tokens_hint, self._deltas)
        else:
            usage = responses_usage(
                as_int(self._usage.get("prompt_tokens")),
                as_int(self._usage.get("completion_tokens")),
                self._usage,
            )
        status = "completed" if reason is None else "incomplete"
        self.response = self._response(status, usage=usage, incomplete=reason)
        events.append(self._event(f"response.{status}", response=self.response))
        self._closed = True  # last: if the engine's values made this raise, fail() still works
        return events

    def fail(self, message: str) -> list[Event]:
        """The upstream failed mid-stream: `response.failed`, and nothing after it."""
        self._check_open()
        self._closed = True
        events = self._opening() if not self._started else []
        self._started = True
        failed = self._response("failed", error=message)
        events.append(self._event("response.failed", response=failed))
        return events

    # --- internals ---------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return kind, data

    def _response(
        self,
        status: str,
        *,
        usage: dict[str, Any] | None = None,
        incomplete: str | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        return response_object(
            self.request,
            response_id=self.response_id,
            model=self.model,
            created_at=self.created_at,
            status=status,
            output=[self._output[i] for i in sorted(self._output)],
            usage=usage,
            incomplete_reason=incomplete,
            error=error,
        )

    def _opening(self) -> list[Event]:
        response = self._response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def _text(self, text: str, events: list[Event]) -> None:
        if self._message is None:
            self._close_calls(events)
            index, item_id = self._next_index, f"msg_{self.response_id}_{self._next_index}"
            self._next_index += 1
            self._message = (index, item_id)
            self._message_text = []
            item = output_message(item_id, "", status="in_progress")
            item["content"] = []
            events.append(self._event("response.output_item.added", output_index=index, item=item))
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    part=_text_part(""),
                )
            )
        index, item_id = self._message
        self._message_text.append(text)
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )

    def _close_message(self, events: list[Event]) -> None:
        if self._message is None:
            return
        index, item_id = self._message
        self._message = None
        text = "".join(self._message_text)
        status = "completed" if incomplete_reason(self._finish_reason) is None else "incomplete"
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        events.append(self._event("response.output_text.done", **where, text=text, logprobs=[]))
        events.append(self._event("response.content_part.done", **where, part=_text_part(text)))
        item = output_message(item_id, text, status=status)
        self._output[index] = item
        events.append(self._event("response.output_item.done", output_index=index, item=item))

    def _tool(self, fragment: Mapping[str, Any], events: list[Event]) -> None:
        index, call, function = self._call_of(fragment)
        if call is None:
            self._close_message(events)
            output_index = self._next_index
            self._next_index += 1
            item_id = f"fc_{self.response_id}_{output_index}"
            call_id = fragment.get("id") or f"call_{self.response_id}_{index}"
            call = _Call(output_index, item_id, str(call_id), str(function.get("name") or ""))
            self._calls[index] = call
            self._open_calls.append(call)
            item = output_function_call(item_id, call.call_id, call.name, "", "in_progress")
            events.append(
                self._event("response.output_item.added", output_index=output_index, item=item)
            )
        elif not call.name and isinstance(function.get("name"), str):
            call.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, Mapping):  # a few engines send the object itself
            arguments = "" if call.arguments else dumps(arguments)
        if not isinstance(arguments, str) or not arguments or call not in self._open_calls:
            return
        call.arguments.append(arguments)
        events.append(
            self._event(
                "response.function_call_arguments.delta",
                item_id=call.item_id,
                output_index=call.output_index,
                delta=arguments,
            )
        )

    def _close_calls(self, events: list[Event]) -> None:
        for call in self._open_calls:
            arguments = "".join(call.arguments)
            where = {"item_id": call.item_id, "output_index": call.output_index}
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=call.name,
                    arguments=arguments,
                )
            )
            item = output_function_call(call.item_id, call.call_id, call.name, arguments)
            self._output[call.output_index] = item
            events.append(
                self._event("response.output_item.done", output_index=call.output_index, item=item)
            )
        self._open_calls.clear()
