"""An OpenAI Chat Completions client in front of the Anthropic Messages API.

Requests go OpenAI -> Anthropic (`chat_request_to_messages`); responses come back
Anthropic -> OpenAI, whole (`message_to_chat_response`) or streamed
(`MessagesStreamToChatStream`). Dicts in, dicts out; no IO.

Request mapping (OpenAI "Chat Completions" -> Anthropic "Messages")
--------------------------------------------------------------------
* `system` and `developer` messages, wherever they appear, -> the top-level `system`
  (Anthropic has no system turns): a string if there is one, text blocks if several.
* Anthropic requires user/assistant alternation and tool results inside user turns:
  `tool` messages become `tool_result` blocks, consecutive messages of the same role
  are merged into one turn, and in a merged user turn the tool_result blocks move
  first (Anthropic rejects a turn whose tool results follow text).
* assistant `tool_calls` -> `tool_use` blocks, `input` parsed from the arguments
  (`RAW_ARGUMENTS_KEY` holds arguments that are not a JSON object).
* content parts: text -> text blocks (empty ones dropped: Anthropic rejects them);
  `image_url` -> image blocks (data URLs -> base64 sources, others -> URL sources);
  `file` with inline PDF data -> a document block. Audio and file ids: 400.
* `max_tokens` is required by Anthropic: `max_completion_tokens`, else the deprecated
  `max_tokens`, else DEFAULT_MAX_TOKENS (4096: enough for a long answer, and within
  every current Claude model's output limit).
* `temperature` is clamped to Anthropic's 0..1 (OpenAI allows up to 2): rescaling
  would change the meaning of the common values (0.7 stays 0.7).
* `stop` (string or list) -> `stop_sequences`; `tools` -> tools with `input_schema`;
  `tool_choice` auto/required/none/{function} -> auto/any/none/tool;
  `parallel_tool_calls: false` -> `disable_parallel_tool_use`; `user` ->
  `metadata.user_id`; `stream` carries over (`stream_options.include_usage` is
  honoured by the stream translator: the caller passes it in).
* `n` > 1 cannot be served: 400. Ignored: `response_format`, `reasoning_effort`,
  `seed`, `logprobs`, penalties, `logit_bias`, `store`, `metadata` and anything
  unknown (Anthropic has no equivalent for them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gate.dialects._shared import (
    STOP_TO_FINISH,
    dumps,
    openai_usage,
    parse_tool_arguments,
    request_model,
)
from gate.dialects.errors import InvalidRequest
from gate.dialects.openai_anthropic_stream import (
    SSE_DONE,
    MessagesStreamToChatStream,
    chat_sse_bytes,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "SSE_DONE",
    "MessagesStreamToChatStream",
    "chat_request_to_messages",
    "chat_sse_bytes",
    "message_to_chat_response",
]

DEFAULT_MAX_TOKENS: Final = 4096
_TOOL_CHOICES: Final = {"auto": "auto", "required": "any", "none": "none"}


def chat_request_to_messages(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI Chat Completions request body as an Anthropic Messages request body.

    Raises InvalidRequest (400) for a malformed body or something Anthropic cannot take.
    """
    model = request_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("must be a list of messages", param="messages")
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("only n=1 can be served by this model", param="n")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequest("a message must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), where))
        elif role == "user":
            _append(turns, "user", _user_blocks(message.get("content"), where))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, where))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, where)])
        else:
            raise InvalidRequest(f"role {role!r} is not supported", param=f"{where}.role")
    for turn in turns:
        if turn["role"] == "user":  # stable: tool results first, in their order
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    request: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        request["system"] = system[0]["text"] if len(system) == 1 else system
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        request["temperature"] = min(float(temperature), 1.0)
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            request[key] = body[key]
    stop = body.get("stop")
    if isinstance(stop, str):
        request["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        request["stop_sequences"] = list(stop)
    if body.get("stream"):
        request["stream"] = True
    tools = body.get("tools")
    if tools:
        request["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice:
            request["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        request["metadata"] = {"user_id": body["user"]}
    return request


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Text content (a string or text/refusal parts) as non-empty text blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("must be a string or a list of parts", param=f"{where}.content")
    return [
        {"type": "text", "text": text}
        for i, part in enumerate(content)
        if (text := _text_part(part, f"{where}.content[{i}]"))
    ]


def _text_part(part: Any, where: str) -> str:
    kind = part.get("type") if isinstance(part, Mapping) else None
    text = part.get(kind) if kind in ("text", "refusal") and isinstance(part, Mapping) else None
    if not isinstance(text, str):
        raise InvalidRequest(f"expected a text part, not {kind!r}", param=where)
    return text


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(content, where)
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "image_url" and isinstance(part, Mapping):
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            blocks.append({"type": "image", "source": _source(url, at)})
        elif kind == "file" and isinstance(part, Mapping):
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, Mapping) else None
            if not isinstance(data, str) or not data.startswith("data:"):
                raise InvalidRequest("only inline file_data can be sent", param=at)
            blocks.append({"type": "document", "source": _source(data, at)})
        elif text := _text_part(part, at):
            blocks.append({"type": "text", "text": text})
    return blocks


def _source(url: Any, where: str) -> dict[str, Any]:
    """An image or file URL as an Anthropic source: a data URL is inlined as base64."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest("a URL is required", param=where)
    if not url.startswith("data:"):
        return {"type": "url", "url": url}
    header, comma, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding != "base64":
        raise InvalidRequest("a data URL must be base64-encoded", param=where)
    return {"type": "base64", "media_type": media_type, "data": data}


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), where)
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(call, Mapping):
            raise InvalidRequest(
                "only function tool calls are supported", param=f"{where}.tool_calls[{i}]"
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": parse_tool_arguments(function.get("arguments")),
            }
        )
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise InvalidRequest("a tool message needs a tool_call_id", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    texts = _text_blocks(message.get("content"), where)
    if texts:
        block["content"] = texts[0]["text"] if isinstance(message.get("content"), str) else texts
    return block


def _tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if (
        not isinstance(tool, Mapping)
        or tool.get("type") != "function"
        or not isinstance(function, Mapping)
    ):
        raise InvalidRequest("only function tools are supported", param=where)
    if not isinstance(function.get("name"), str):
        raise InvalidRequest("a function needs a name", param=f"{where}.function.name")
    result: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        result["description"] = function["description"]
    return result


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return {"type": _TOOL_CHOICES[choice]}
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"type": "tool", "name": choice["function"].get("name")}
    raise InvalidRequest(f"unsupported tool_choice {choice!r}", param="tool_choice")


def _completion_id(message_id: Any) -> str:
    suffix = message_id.removeprefix("msg_") if isinstance(message_id, str) else ""
    return "chatcmpl-" + (suffix or "gate")


def message_to_chat_response(
    msg: Mapping[str, Any], *, model: str, created: int = 0, completion_id: str | None = None
) -> dict[str, Any]:
    """An Anthropic `message` as an OpenAI `chat.completion`.

    `created` is the Unix time to report (time is an argument here, never a call).
    Text blocks are concatenated as they are (Anthropic splits one answer into several
    blocks around citations); tool_use blocks become `tool_calls`, and `content` is
    null when there are tool calls and no text, as OpenAI sends it. Thinking blocks
    are dropped: Chat Completions has no field for them.
    """
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or ():
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            function = {"name": block.get("name", ""), "arguments": dumps(block.get("input") or {})}
            calls.append({"id": block.get("id", ""), "type": "function", "function": function})
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id or _completion_id(msg.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": STOP_TO_FINISH.get(msg.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": openai_usage(msg.get("usage")),
    }
