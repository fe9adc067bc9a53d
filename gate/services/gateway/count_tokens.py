"""Anthropic's /v1/messages/count_tokens answered here for an engine that has no such
endpoint (an OpenAI-dialect one): its tokenizer counts, or Gate estimates
(gate.services.engines.tokens).
"""

from __future__ import annotations

from gate.services.engines.client import UpstreamClient
from gate.services.engines.registry import Provider
from gate.services.engines.tokens import count_prompt_tokens, prompt_text
from gate.services.gateway.exchange import ApiError, Exchange, decode_request
from gate.services.http.router import Send, send_json

__all__ = ["count_tokens"]


async def count_tokens(
    client: UpstreamClient,
    provider: Provider,
    body: bytes,
    exchange: Exchange,
    send: Send,
    response_timeout: float,
) -> None:
    """Answer count_tokens with `provider`'s count of the prompt, or an estimate."""
    request = decode_request(body)
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        raise ApiError(400, "messages: required, a list of messages")
    exchange.provider = provider.name
    count, exact = await count_prompt_tokens(
        client,
        provider,
        exchange.model,
        prompt_text(request),
        response_timeout,
    )
    exchange.status, exchange.tokens_in = 200, count
    header = (b"x-gate-token-count", b"engine" if exact else b"estimate")
    await send_json(send, 200, {"input_tokens": count}, [header])
