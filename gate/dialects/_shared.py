"""Helpers the translators share: JSON, tool arguments, stop reasons, usage, and reading
an OpenAI chat answer (whole or as stream chunks), which two of them translate."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import msgspec

from gate.dialects.errors import InvalidRequest, MalformedUpstream

#: Where an unparseable tool-call `arguments` string goes: Anthropic's `input` must be
#: a JSON object, and dropping what the model wrote would hide the failure from the
#: client, which is the one that can retry or report it.
RAW_ARGUMENTS_KEY: Final = "_raw_arguments"

_encode = msgspec.json.Encoder().encode

#: OpenAI finish_reason -> Anthropic stop_reason. Sources: the `finish_reason` enum of
#: openai.types.chat (stop, length, tool_calls, content_filter, function_call) and the
#: `stop_reason` enum of anthropic.types.StopReason. Anthropic's `refusal` ("streaming
#: classifiers intervene") is the counterpart of `content_filter`.
FINISH_TO_STOP: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

#: Anthropic stop_reason -> OpenAI finish_reason. `pause_turn` (a server-tool turn to
#: be resumed) has no counterpart and reads as a normal stop; running out of context
#: window is `length`, as OpenAI reports it.
STOP_TO_FINISH: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}


def dumps(value: Any) -> str:
    """Compact JSON text (no spaces), as both APIs send it."""
    return _encode(value).decode()


def dumps_bytes(value: Any) -> bytes:
    return _encode(value)


def parse_tool_arguments(arguments: Any) -> dict[str, Any]:
    """An OpenAI `function.arguments` string as an Anthropic `input` object.

    Empty means no arguments (some engines send "" for a parameterless function).
    Anything that is not a JSON object is kept verbatim under RAW_ARGUMENTS_KEY.
    """
    if isinstance(arguments, Mapping):  # a few engines send the object itself
        return dict(arguments)
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {RAW_ARGUMENTS_KEY: arguments}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS_KEY: arguments}


def request_model(body: Any) -> str:
    """The model a client's request body names; InvalidRequest (400) when the body is not
    a JSON object or names none."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("a model name is required", param="model")
    return model


def with_system_first(
    instructions: list[str], messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`messages` led by one system message holding every non-empty instruction text, in
    order, separated by a blank line (or `messages` alone when there is none).

    System (and developer) turns a client puts among the others end up there too: many
    engines' chat templates (Gemma's, Mistral's, some Qwen ones) raise on a system message
    after the first, while every template that takes a system prompt takes it first. The
    text stays an instruction from the system, in the order given; only its place among
    the turns is lost.
    """
    texts = [text for text in instructions if text]
    if not texts:
        return messages
    return [{"role": "system", "content": "\n\n".join(texts)}, *messages]


def collapse_parts(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Chat content parts as one string when they are all text (joined with "\\n"), since
    every engine's chat template accepts a string; any other mix stays a list of parts."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def is_json_object(text: str) -> bool:
    """Whether `text` is already a complete JSON object (so a stream of it has ended)."""
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def as_int(value: Any) -> int:
    """A token count from an engine: a non-negative int, or 0 for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def stop_reason_from_finish(
    finish_reason: Any, *, has_tool_calls: bool, matched_stop: Any = None
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish_reason.

    * Some engines (Ollama among them) report `stop` for a turn that made tool calls;
      the tool calls win, since the client must run them.
    * OpenAI does not say which stop sequence matched, so `stop_sequence` is only set
      when the engine reports it: vLLM's `stop_reason` field holds the matched string
      (or a token id, or null for EOS), which is exactly what Anthropic returns.
    * A missing or unknown finish_reason reads as end_turn.
    """
    if has_tool_calls and finish_reason in (None, "stop", "tool_calls", "function_call"):
        return "tool_use", None
    if finish_reason in (None, "stop") and isinstance(matched_stop, str) and matched_stop:
        return "stop_sequence", matched_stop
    return FINISH_TO_STOP.get(finish_reason, "end_turn"), None


def anthropic_usage(usage: Any) -> dict[str, int]:
    """OpenAI usage -> Anthropic usage.

    OpenAI's prompt_tokens include cached tokens (prompt_tokens_details.cached_tokens);
    Anthropic counts cache reads apart ("total input tokens is the sum of input_tokens,
    cache_creation_input_tokens and cache_read_input_tokens"), so they are split out.
    """
    if not isinstance(usage, Mapping):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = as_int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = (
        min(as_int(details.get("cached_tokens")), prompt) if isinstance(details, Mapping) else 0
    )
    result = {
        "input_tokens": prompt - cached,
        "output_tokens": as_int(usage.get("completion_tokens")),
    }
    if cached:
        result["cache_read_input_tokens"] = cached
    return result


def openai_usage(usage: Any) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage: the inverse split of `anthropic_usage`."""
    if not isinstance(usage, Mapping):
        usage = {}
    cached = as_int(usage.get("cache_read_input_tokens"))
    prompt = as_int(usage.get("input_tokens")) + as_int(usage.get("cache_creation_input_tokens"))
    prompt += cached
    completion = as_int(usage.get("output_tokens"))
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    return result


class ChunkReading(NamedTuple):
    """What one `chat.completion.chunk` says for choice 0, the only one translated."""

    usage: Mapping[str, Any] | None  # the usage chunk that include_usage brings
    pieces: list[tuple[str, Any]]  # ("text", str) or ("tool", a tool_calls fragment), in order
    finish_reason: Any
    stop_reason: Any  # vLLM's matched stop string, beside finish_reason


def read_chat_chunk(chunk: Any) -> ChunkReading:
    """One stream chunk of an OpenAI engine, read. A refusal delta reads as text."""
    if not isinstance(chunk, Mapping):
        raise MalformedUpstream("a stream chunk is not a JSON object")
    usage = chunk.get("usage")
    pieces: list[tuple[str, Any]] = []
    finish_reason = stop_reason = None
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    pieces.append(("text", text))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, Mapping):
                    pieces.append(("tool", call))
        if choice.get("finish_reason"):
            finish_reason, stop_reason = choice["finish_reason"], choice.get("stop_reason")
    return ChunkReading(
        usage if isinstance(usage, Mapping) else None, pieces, finish_reason, stop_reason
    )


def first_choice_message(resp: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """An OpenAI chat completion's choice 0 and its message ({} if it has none)."""
    choices = resp.get("choices") if isinstance(resp, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise MalformedUpstream("the engine's response has no choices")
    choice = choices[0]
    message = choice.get("message")
    return choice, message if isinstance(message, Mapping) else {}


def fragment_index(
    fragment: Mapping[str, Any], known_ids: Iterable[Any], count: int, last: int
) -> int:
    """The tool call a streamed `tool_calls` fragment belongs to: its `index`; for engines
    that omit it, a new call (numbered `count`) when it has an id not seen among
    `known_ids`, else the call the last fragment went to."""
    index = fragment.get("index")
    if isinstance(index, int):
        return index
    call_id = fragment.get("id")
    return count if call_id and call_id not in set(known_ids) else last
