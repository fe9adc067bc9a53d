"""A Responses API client in front of an engine that speaks only OpenAI Chat Completions.

Requests go Responses -> Chat Completions (`responses_to_chat_request`); responses come
back Chat Completions -> Responses, whole (`chat_response_to_response`) or streamed
(`ChatStreamToResponsesStream`). Dicts in, dicts out: the caller decodes and encodes
JSON, keeps the conversation state (`previous_response_id`) and does all IO.

Request mapping (OpenAI "Responses" API reference -> "Chat Completions")
-------------------------------------------------------------------------
* `input` as a string -> one user message. As items:
  - `message` items (a `type` may be left out): roles user and assistant keep their
    role; `system` and `developer` messages, and `instructions`, join one leading system
    message, in order (`with_system_first`: many chat templates refuse a system message
    after the first). Parts `input_text`/`output_text`/`refusal` -> text (text-only
    content becomes a string); `input_image` -> an `image_url` part (its URL or data
    URL); `input_file` with inline `file_data` -> a `file` part. A file id (files
    Gate cannot fetch) or any other part: 400.
  - `function_call` -> a `tool_calls` entry of an assistant message (consecutive calls,
    and the assistant text just before them, share one message, as Chat requires);
    `function_call_output` -> a `tool` message (the text of a list output joined; its
    images go to a user message after it, since tool messages take text only).
  - `item_reference`: 400 (items Gate never saw cannot be resolved). Every other item
    type is dropped: `reasoning` (OpenAI's encrypted reasoning means nothing to another
    model) and the records of hosted or custom tools (`web_search_call`,
    `local_shell_call`, `custom_tool_call`...), which match no tool an engine was given.
* `tools`: function tools, flat in Responses (`{type, name, description, parameters,
  strict}`), -> Chat's nested `{type: "function", function: {...}}`. Every other tool
  type (`web_search`, `file_search`, `local_shell`, `custom`, `mcp`, ...) is dropped:
  they are run by OpenAI's servers or need a grammar an engine does not take, and a
  client such as Codex CLI always lists some of them, so refusing them would refuse the
  client. The model simply does not see them.
* `tool_choice` auto/none/required and `{type: "function", name}` map one to one;
  `{type: "allowed_tools", mode, tools}` keeps only those function tools, with `mode` as
  the choice. Forcing a dropped tool type: 400. Without tools no `tool_choice` is sent.
* `max_output_tokens` -> `max_tokens`; `temperature`, `top_p`, `parallel_tool_calls`
  carry over, and so do the Chat settings a client of a local engine may add although
  the Responses API has none of them (`seed`, `stop`, `logit_bias`, `top_k`, and the
  frequency and presence penalties); `text.format` json_schema/json_object ->
  `response_format`; `stream` -> `stream` + `stream_options.include_usage`.
* `conversation` (OpenAI's server-side Conversations): 400, Gate keeps none.
* Ignored: `include`, `store`, `reasoning`, `prompt_cache_key`, `service_tier`,
  `metadata`, `truncation`, `background`, `text.verbosity`, `user`, `safety_identifier`
  and anything unknown: they steer OpenAI's service, not the sampled text.

`previous_response_id` is resolved by the caller: it passes the earlier turns as
`history`, and keeps the `turns` returned (history + this input) for the next one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gate.dialects._shared import (
    as_int,
    collapse_parts,
    dumps,
    first_choice_message,
    request_model,
    with_system_first,
)
from gate.dialects.errors import InvalidRequest
from gate.dialects.responses_chat_stream import (
    ChatStreamToResponsesStream,
    assistant_turn,
    incomplete_reason,
    output_function_call,
    output_message,
    response_object,
    responses_usage,
)

__all__ = [
    "ChatStreamToResponsesStream",
    "assistant_turn",
    "chat_response_to_response",
    "new_response_id",
    "response_object",
    "responses_to_chat_request",
]

_ROLES: Final = frozenset({"user", "assistant", "system", "developer"})
_TOOL_CHOICES: Final = frozenset({"auto", "none", "required"})
_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text"})
#: Chat sampling settings the Responses API lacks, which clients of local engines add
#: to a request (the SDKs' `extra_body`) and every such engine takes: carried over.
_CHAT_EXTRAS: Final = (
    "seed",
    "stop",
    "logit_bias",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
)


def new_response_id() -> str:
    """A response id as OpenAI writes them: `resp_` and hex."""
    return "resp_" + uuid.uuid4().hex


def responses_to_chat_request(
    body: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Responses request body as (a Chat Completions request body, the turns).

    `history` is the conversation before this request (previous_response_id resolved by
    the caller), as chat messages. The turns returned are `history` followed by this
    request's input, system messages still in place and without `instructions` (OpenAI
    does not carry instructions over to the next response): what to keep for the next.
    Raises InvalidRequest (400) for a malformed body or input an engine cannot take.
    """
    model = request_model(body)
    if body.get("conversation") is not None:
        raise InvalidRequest(
            "Gate keeps no conversations for this engine; use previous_response_id",
            param="conversation",
        )
    turns = [dict(turn) for turn in history] + _input(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("must be a string", param="instructions")
    system = [instructions] if instructions else []
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if turn["role"] == "system":
            system.append(turn["content"])
        else:
            messages.append(turn)
    request: dict[str, Any] = {"model": model, "messages": with_system_first(system, messages)}
    if body.get("max_output_tokens") is not None:
        request["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", *_CHAT_EXTRAS):
        if body.get(key) is not None:
            request[key] = body[key]
    if body.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    request.update(_tools(body))
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        request["response_format"] = response_format
    return request, turns


# --- input ---------------------------------------------------------------------------


def _input(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest("must be a string or a list of items", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input.{i}"
        if not isinstance(item, Mapping):
            raise InvalidRequest("an input item must be an object", param=where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            out.extend(_message(item, where))
        elif kind == "function_call":
            _function_call(item, where, out)
        elif kind == "function_call_output":
            out.extend(_function_call_output(item, where))
        elif kind == "item_reference":
            raise InvalidRequest(
                "item references cannot be resolved for this engine; send the items",
                param=where,
            )
        elif not isinstance(kind, str):
            raise InvalidRequest("an input item needs a type", param=f"{where}.type")
        # Any other type (reasoning, hosted and custom tool records) is dropped: see above.
    return out


def _message(item: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    role, content = item.get("role"), item.get("content")
    if role not in _ROLES:
        raise InvalidRequest(
            f"role {role!r} is not user, assistant, system or developer", param=f"{where}.role"
        )
    chat_role = "system" if role == "developer" else role
    if isinstance(content, str):
        return [{"role": chat_role, "content": content}]
    if not isinstance(content, list):
        raise InvalidRequest("must be a string or a list of parts", param=f"{where}.content")
    parts = [_part(part, f"{where}.content.{i}") for i, part in enumerate(content)]
    if chat_role == "user":
        return [{"role": "user", "content": collapse_parts(parts) if parts else ""}]
    if any(part["type"] != "text" for part in parts):
        raise InvalidRequest(f"a {role} message can hold only text", param=f"{where}.content")
    return [{"role": chat_role, "content": "\n".join(part["text"] for part in parts)}]


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if not isinstance(part, Mapping):
        raise InvalidRequest("a content part must be an object", param=where)
    if kind in _TEXT_PARTS or kind == "refusal":
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise InvalidRequest("a text part needs a string", param=where)
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(
                "only images given by URL or data URL can be sent (not file ids)", param=where
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and isinstance(part.get("file_data"), str):
        file = {"file_data": part["file_data"], "filename": part.get("filename") or "file"}
        return {"type": "file", "file": file}
    raise InvalidRequest(f"content part {kind!r} cannot be sent to this engine", param=where)


def _function_call(item: Mapping[str, Any], where: str, out: list[dict[str, Any]]) -> None:
    name, call_id = item.get("name"), item.get("call_id")
    if not isinstance(name, str) or not isinstance(call_id, str):
        raise InvalidRequest("a function_call needs a name and a call_id", param=where)
    arguments = item.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = dumps(arguments)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    last = out[-1] if out else None
    # Chat wants one assistant message with every call of the turn, then the tool
    # messages; Responses lists the text and each call as items of their own.
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        # Content "" rather than null: llama-cpp-python's server rejects null.
        out.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _function_call_output(item: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        raise InvalidRequest("a function_call_output needs a call_id", param=where)
    output = item.get("output", "")
    images: list[dict[str, Any]] = []
    if isinstance(output, list):
        parts = [_part(part, f"{where}.output.{i}") for i, part in enumerate(output)]
        text = "\n".join(part["text"] for part in parts if part["type"] == "text")
        images = [part for part in parts if part["type"] != "text"]
    elif isinstance(output, str):
        text = output
    else:
        raise InvalidRequest("must be a string or a list of parts", param=f"{where}.output")
    result: list[dict[str, Any]] = [{"role": "tool", "tool_call_id": call_id, "content": text}]
    if images:
        result.append({"role": "user", "content": images})
    return result


# --- tools and format ------------------------------------------------------------------


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise InvalidRequest("must be a list", param="tools")
    functions = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise InvalidRequest("a tool must be an object", param=f"tools.{i}")
        if tool.get("type") == "function":
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise InvalidRequest("a function tool needs a name", param=f"tools.{i}.name")
            functions[tool["name"]] = _function_tool(tool)
    choice = body.get("tool_choice")
    chat_choice: Any = None
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise InvalidRequest(f"unknown tool_choice {choice!r}", param="tool_choice")
        chat_choice = choice
    elif isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "function":
            chat_choice = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind == "allowed_tools":
            allowed = {t.get("name") for t in choice.get("tools") or () if isinstance(t, Mapping)}
            functions = {name: tool for name, tool in functions.items() if name in allowed}
            chat_choice = choice.get("mode", "auto")
        else:
            raise InvalidRequest(
                f"tool_choice {kind!r} names a tool type this engine cannot run",
                param="tool_choice",
            )
    elif choice is not None:
        raise InvalidRequest("must be a string or an object", param="tool_choice")
    if not functions:
        if chat_choice == "required" or isinstance(chat_choice, Mapping):
            raise InvalidRequest("tool_choice requires a function tool", param="tool_choice")
        return {}
    result: dict[str, Any] = {"tools": list(functions.values())}
    if chat_choice is not None:
        result["tool_choice"] = chat_choice
    if isinstance(body.get("parallel_tool_calls"), bool):
        result["parallel_tool_calls"] = body["parallel_tool_calls"]
    return result


def _function_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": tool["name"],
        "parameters": tool.get("parameters") or {"type": "object", "properties": {}},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    return None  # "text", and anything unknown: plain text


# --- the response ------------------------------------------------------------------------


def chat_response_to_response(
    resp: Mapping[str, Any],
    request: Mapping[str, Any],
    *,
    response_id: str,
    model: str,
    created_at: int,
) -> dict[str, Any]:
    """An OpenAI `chat.completion` as a Responses `response` object.

    `request` is the client's Responses request (its settings are echoed, as OpenAI
    does); `model` the name the client asked for. Output: one `message` item with the
    text (a refusal as a `refusal` part) when there is any, then one `function_call`
    item per tool call (the legacy `function_call` only when there are no `tool_calls`:
    llama.cpp sends both for one call). finish_reason `length` or `content_filter`
    makes it `incomplete`, as OpenAI reports a reply cut short.
    Raises MalformedUpstream if the engine's response has no choice to translate.
    """
    choice, message = first_choice_message(resp)
    text = message.get("content")
    if isinstance(text, list):  # content parts, from engines that echo the request form
        text = "".join(p.get("text", "") for p in text if isinstance(p, Mapping))
    refusal = message.get("refusal")
    incomplete = incomplete_reason(choice.get("finish_reason"))
    status = "completed" if incomplete is None else "incomplete"
    output: list[dict[str, Any]] = []
    if (isinstance(text, str) and text) or (isinstance(refusal, str) and refusal):
        output.append(
            output_message(
                "msg_" + uuid.uuid4().hex,
                text if isinstance(text, str) else "",
                refusal if isinstance(refusal, str) else "",
                status,
            )
        )
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, Mapping)]
    if not calls and isinstance(message.get("function_call"), Mapping):
        calls.append({"function": message["function_call"]})
    for n, call in enumerate(calls):
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = dumps(arguments) if isinstance(arguments, Mapping) else ""
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
        output.append(
            output_function_call(
                "fc_" + uuid.uuid4().hex,
                call_id or f"call_{response_id}_{n}",
                str(function.get("name") or ""),
                arguments,
            )
        )
    usage = resp.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    return response_object(
        request,
        response_id=response_id,
        model=model,
        created_at=created_at,
        status=status,
        output=output,
        usage=responses_usage(
            as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens")), usage
        ),
        incomplete_reason=incomplete,
    )
