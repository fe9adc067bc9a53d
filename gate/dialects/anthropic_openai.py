"""An Anthropic Messages client in front of an engine that speaks OpenAI Chat Completions.

Requests go Anthropic -> OpenAI (`messages_to_chat_request`); responses come back
OpenAI -> Anthropic, whole (`chat_response_to_message`) or streamed
(`ChatStreamToMessagesStream`). Dicts in, dicts out: the caller decodes and encodes
JSON and does all IO.

Request mapping (Anthropic "Messages" API reference -> OpenAI "Chat Completions")
---------------------------------------------------------------------------------
* `system` (string or text blocks) -> one leading `system` message. `role: "system"`
  messages among the turns (Claude Code sends them) join it, after it, in order,
  separated by a blank line: see `messages_to_chat_request` for why not in place.
* Content that is only text becomes a string (text blocks joined with "\\n"), since
  every engine's chat template accepts a string; content with images or documents
  becomes a list of OpenAI content parts.
* image blocks -> `image_url` parts: base64 sources as `data:` URLs, URL sources as
  is. Text documents -> text; base64 PDFs -> OpenAI `file` parts (for engines that
  read them). File-API sources cannot be resolved here: 400.
* assistant `tool_use` blocks -> `tool_calls` (arguments = the input as JSON text);
  `thinking`/`redacted_thinking` blocks are dropped (their signatures mean nothing to
  another model, and OpenAI has no place for them).
* user `tool_result` blocks -> one `role: "tool"` message each, placed before the rest
  of the user turn (OpenAI requires tool messages right after the assistant's
  tool_calls; Anthropic requires tool_result blocks first, so order is kept). Text
  content is joined with "\\n"; `is_error: true` prefixes it with "Error: " because
  OpenAI has no error flag; images in a result move to the user message that follows
  (tool messages take text only).
* `max_tokens`, `temperature`, `top_p` carry over; `top_k` too, as the extra parameter
  llama.cpp, vLLM and LM Studio accept (Ollama ignores it). `stop_sequences` -> `stop`.
* `stream: true` -> `stream: true` + `stream_options.include_usage`, so the last chunk
  brings the token counts Anthropic's `message_delta` must carry.
* `tools` -> function tools (`input_schema` -> `parameters`). Anthropic-defined and
  server tools (a `type` other than "custom": bash, web_search...) cannot run on an
  engine: 400. `tool_choice` auto/any/tool/none -> auto/required/{function}/none;
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`.
* `metadata.user_id` -> `user`.
* Ignored: `thinking`, `service_tier`, `container`, `mcp_servers`, `cache_control`,
  citations, and anything unknown. They tune Anthropic's service, not the sampled
  text, so dropping them does not change what the client asked the model.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

from gate.dialects._shared import (
    anthropic_usage,
    collapse_parts,
    dumps,
    first_choice_message,
    parse_tool_arguments,
    request_model,
    stop_reason_from_finish,
    with_system_first,
)
from gate.dialects.anthropic_openai_stream import ChatStreamToMessagesStream, sse_bytes
from gate.dialects.errors import InvalidRequest

__all__ = [
    "ChatStreamToMessagesStream",
    "chat_response_to_message",
    "messages_to_chat_request",
    "sse_bytes",
]

_DROPPED_BLOCKS: Final = frozenset({"thinking", "redacted_thinking"})
_TOOL_CHOICES: Final = {"auto": "auto", "any": "required", "none": "none"}


def messages_to_chat_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request body as an OpenAI Chat Completions request body.

    Raises InvalidRequest (400) for a malformed body or content an engine cannot take.
    """
    model = request_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("must be a list of messages", param="messages")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    instructions = [_system_text(system, "system")] if system else []
    for i, message in enumerate(messages):
        if isinstance(message, Mapping) and message.get("role") == "system":
            instructions.append(_system_text(message.get("content"), f"messages.{i}.content"))
        else:
            out.extend(_message(message, f"messages.{i}"))
    # Claude Code puts `role: "system"` messages among the turns (the Anthropic API takes
    # them): they join the leading system message (see `with_system_first` for why).
    request: dict[str, Any] = {"model": model, "messages": with_system_first(instructions, out)}
    for key in ("max_tokens", "temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            request[key] = body[key]
    stop = body.get("stop_sequences")
    if stop:
        request["stop"] = list(stop)
    if body.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    tools = body.get("tools")
    if tools:
        request["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
        choice = body.get("tool_choice")
        if isinstance(choice, Mapping):
            request.update(_tool_choice(choice))
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        request["user"] = metadata["user_id"]
    return request


def _system_text(system: Any, where: str) -> str:
    """A system prompt's text: a string, or text blocks joined (cache_control dropped)."""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(_text_of(block, f"{where}.{i}") for i, block in enumerate(system))
    raise InvalidRequest("must be a string or a list of text blocks", param=where)


def _text_of(block: Any, where: str) -> str:
    if not isinstance(block, Mapping) or block.get("type") != "text":
        raise InvalidRequest("expected a text block", param=where)
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest("a text block needs a string `text`", param=f"{where}.text")
    return text


def _message(message: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, Mapping):
        raise InvalidRequest("a message must be an object", param=where)
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise InvalidRequest(
            f"role {role!r} is not 'user', 'assistant' or 'system'", param=f"{where}.role"
        )
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest("must be a string or a list of blocks", param=f"{where}.content")
    if role == "assistant":
        return [_assistant(content, f"{where}.content")]
    return _user(content, f"{where}.content")


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(_text_of(block, f"{where}.{i}"))
        elif kind == "tool_use":
            arguments = dumps(block.get("input") or {})
            function = {"name": block.get("name", ""), "arguments": arguments}
            calls.append({"id": block.get("id", ""), "type": "function", "function": function})
        elif kind not in _DROPPED_BLOCKS:
            raise InvalidRequest(f"block type {kind!r} cannot be sent", param=f"{where}.{i}.type")
    # Content is always a string, "" beside tool calls: OpenAI allows null there, but
    # llama-cpp-python's server rejects it (and every engine accepts "").
    result: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if calls:
        result["tool_calls"] = calls
    return result


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        at = f"{where}.{i}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "tool_result":
            text, images = _tool_result(block, at)
            call_id = block.get("tool_use_id", "")
            tool_messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
            parts.extend(images)
        elif kind == "text":
            parts.append({"type": "text", "text": _text_of(block, at)})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        elif kind not in _DROPPED_BLOCKS:
            raise InvalidRequest(f"block type {kind!r} cannot be sent", param=f"{at}.type")
    if parts:
        tool_messages.append({"role": "user", "content": collapse_parts(parts)})
    return tool_messages


def _tool_result(block: Mapping[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    content = block.get("content", "")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for i, item in enumerate(content):
            kind = item.get("type") if isinstance(item, Mapping) else None
            if kind == "image":
                images.append(_image(item, f"{where}.content.{i}"))
            elif kind == "document":
                images.append(_document(item, f"{where}.content.{i}"))
            else:
                texts.append(_text_of(item, f"{where}.content.{i}"))
    else:
        raise InvalidRequest("must be a string or a list of blocks", param=f"{where}.content")
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return text, images


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "base64" and isinstance(source, Mapping):
        url = f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
    elif kind == "url" and isinstance(source, Mapping):
        url = source.get("url", "")
    else:
        raise InvalidRequest(f"image source {kind!r} is not supported", param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "text" and isinstance(source, Mapping):
        return {"type": "text", "text": source.get("data", "")}
    if kind == "base64" and isinstance(source, Mapping):
        file = {
            "file_data": f"data:{source.get('media_type', '')};base64,{source.get('data', '')}",
            "filename": block.get("title") or "document.pdf",
        }
        return {"type": "file", "file": file}
    raise InvalidRequest(f"document source {kind!r} is not supported", param=f"{where}.source")


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
        raise InvalidRequest("a tool needs a name", param=where)
    if tool.get("type") not in (None, "custom"):
        raise InvalidRequest(
            f"tool type {tool['type']!r} is defined by Anthropic and cannot run on this engine",
            param=f"{where}.type",
        )
    schema = tool.get("input_schema") or {"type": "object", "properties": {}}
    function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Mapping[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    result: dict[str, Any]
    if kind == "tool":
        result = {"tool_choice": {"type": "function", "function": {"name": choice.get("name")}}}
    elif kind in _TOOL_CHOICES:
        result = {"tool_choice": _TOOL_CHOICES[kind]}
    else:
        raise InvalidRequest(f"unknown tool_choice type {kind!r}", param="tool_choice.type")
    if choice.get("disable_parallel_tool_use"):
        result["parallel_tool_calls"] = False
    return result


def _message_id(response_id: Any) -> str:
    if isinstance(response_id, str) and response_id:
        return "msg_" + response_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def chat_response_to_message(
    resp: Mapping[str, Any], *, model: str, message_id: str | None = None
) -> dict[str, Any]:
    """An OpenAI `chat.completion` as an Anthropic `message`.

    `model` is the name the client asked for. The id is `message_id`, else "msg_" +
    the completion's id. Content: one text block if the text is non-empty (a refusal
    counts as text), then one tool_use block per tool call (the legacy `function_call`
    only when there are no `tool_calls`), its `input` parsed from the arguments (see
    `RAW_ARGUMENTS_KEY` for arguments that are not a JSON object).
    Raises MalformedUpstream if the engine's response has no choice to translate.
    """
    choice, message = first_choice_message(resp)
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):  # content parts, from engines that echo the request form
        text = "".join(p.get("text", "") for p in text if isinstance(p, Mapping))
    refusal = message.get("refusal")
    text = (text if isinstance(text, str) else "") + (refusal if isinstance(refusal, str) else "")
    if text:
        content.append({"type": "text", "text": text})
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, Mapping)]
    # The deprecated single call, only when there are no tool_calls: llama.cpp's servers
    # send both for one call, and translating both would have the client run it twice.
    if not calls and isinstance(message.get("function_call"), Mapping):
        calls.append({"function": message["function_call"]})
    msg_id = message_id or _message_id(resp.get("id"))
    for n, call in enumerate(calls):
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{msg_id}_{n}",
                "name": function.get("name") or "",
                "input": parse_tool_arguments(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = stop_reason_from_finish(
        choice.get("finish_reason"),
        has_tool_calls=bool(calls),
        matched_stop=choice.get("stop_reason"),
    )
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(resp.get("usage")),
    }
