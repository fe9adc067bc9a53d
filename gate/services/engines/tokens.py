"""Counting prompt tokens for Anthropic's /v1/messages/count_tokens on other engines.

Claude Code and other Anthropic clients call count_tokens to manage their context;
an engine that is not Anthropic's has no such endpoint. Engines with a tokenizer API
count exactly (llama.cpp's /extras/tokenize/count, vLLM's /tokenize); for the others
Gate estimates (UTF-8 bytes / 4, the usual rule of thumb for BPE vocabularies) and
says so in the `x-gate-token-count: estimate` response header.

The counted text is the prompt's content (system, every message's text, tool calls
and results, tool definitions) without the engine's chat template, so an exact
count is exact for that text, not for the template's few framing tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from gate.services.engines.client import UpstreamClient, UpstreamError
from gate.services.engines.registry import Provider

__all__ = ["count_prompt_tokens", "estimate_tokens", "prompt_text"]

_TOKENIZE: Final = {
    # kind: (path, field that carries the text, field of the answer)
    "llamacpp": ("/extras/tokenize/count", "input", "count"),
    "vllm": ("/tokenize", "prompt", "count"),
}


def prompt_text(body: Mapping[str, Any]) -> str:
    """Every piece of text an Anthropic Messages request would put in the prompt."""
    parts: list[str] = []
    _collect(body.get("system"), parts)
    for message in body.get("messages") or ():
        if isinstance(message, Mapping):
            _collect(message.get("content"), parts)
    for tool in body.get("tools") or ():
        if isinstance(tool, Mapping):
            parts.append(msgspec.json.encode(tool).decode())
    return "\n".join(parts)


def _collect(content: Any, parts: list[str]) -> None:
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, Mapping):
                continue
            kind = block.get("type")
            if kind == "text":
                parts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                parts.append(f"{block.get('name', '')} {msgspec.json.encode(block.get('input'))!r}")
            elif kind == "tool_result":
                _collect(block.get("content"), parts)


async def count_prompt_tokens(
    client: UpstreamClient, provider: Provider, model: str, text: str, response_timeout: float
) -> tuple[int, bool]:
    """(token count, exact?) for `text` on `provider`'s tokenizer, or an estimate."""
    api = _TOKENIZE.get(provider.kind)
    if api is not None:
        path, field, answer = api
        try:
            async with await client.request(
                "POST",
                provider.url(path),
                headers=[(b"content-type", b"application/json"), *provider.auth_headers],
                body=msgspec.json.encode({"model": model, field: text}),
                response_timeout=response_timeout,
                read_timeout=response_timeout,
            ) as response:
                data = msgspec.json.decode(await response.read(limit=64 * 1024 * 1024))
            if response.status == 200 and isinstance(data.get(answer), int):
                return int(data[answer]), True
        except (UpstreamError, msgspec.DecodeError, AttributeError, RecursionError):
            pass  # the engine's tokenizer is unavailable: estimate instead
    return estimate_tokens(text), False


def estimate_tokens(text: str) -> int:
    """Tokens in `text` without a tokenizer: UTF-8 bytes / 4."""
    return max(1, round(len(text.encode()) / 4))
