"""Translated exchanges: a client and an engine that speak different dialects.

- Anthropic client (/v1/messages) -> OpenAI-only engine (/v1/chat/completions): the
  case of llama.cpp, Ollama's OpenAI API, vLLM, LM Studio.
- OpenAI client (/v1/chat/completions) -> the Anthropic API (/v1/messages).
- OpenAI Responses client (/v1/responses) -> an OpenAI engine without that endpoint
  (/v1/chat/completions); `gateway.responses_api` decides when, and keeps the state.

The pure translation lives in gate.dialects; this module does the IO around it: it
decodes the engine's body or SSE stream as it arrives, feeds the translator, and writes
what comes out to the client at once, so a translated stream is still token by token.
An engine error status is answered with the same status in the client's dialect, as on
the pass-through path (`response.answer_engine_error`); an engine that fails mid-stream
gets the dialect's error event and then the aborted response (`response.AbortResponse`),
never a completed one. Engine
output the translators cannot take, whatever its shape, is the engine failing too: a
502 before the response started, the error event after (see `_engine_output`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import aclosing, contextmanager
from typing import Any

import msgspec

from gate.dialects import (
    SSE_DONE,
    ChatChunkTranslator,
    ChatStreamToMessagesStream,
    ChatStreamToResponsesStream,
    DialectError,
    MalformedUpstream,
    MessagesStreamToChatStream,
    SSEDecoder,
    chat_request_to_messages,
    chat_response_to_message,
    chat_response_to_response,
    chat_sse_bytes,
    message_to_chat_response,
    messages_to_chat_request,
    new_response_id,
    sse_bytes,
)
from gate.dialects.sse import Event
from gate.services.engines.client import UpstreamClient, UpstreamError, UpstreamResponse
from gate.services.engines.registry import Dialect, Provider
from gate.services.engines.tokens import count_prompt_tokens, prompt_text
from gate.services.gateway.exchange import (
    ApiError,
    ApiRoute,
    Exchange,
    Translation,
    api_error,
    decode_request,
)
from gate.services.gateway.keepalive import KeptAlive, kept_alive
from gate.services.gateway.response import AbortResponse, answer_engine_error, error_message
from gate.services.http.router import Send, send_json

__all__ = [
    "chat_engine_to_responses_client",
    "count_translated_prompt",
    "decode_object",
    "stream_head",
    "translate_request",
    "translated_response",
]

_MAX_BODY = 64 * 1024 * 1024
_log = logging.getLogger("gate.bridges")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_ANTHROPIC_USAGE = ("input_tokens", "output_tokens")
_RESPONSES_USAGE = _ANTHROPIC_USAGE  # the Responses API names its usage as Anthropic does
_CHAT_USAGE = ("prompt_tokens", "completion_tokens")


def decode_object(body: bytes) -> dict[str, Any]:
    """A request body that is to be translated: a JSON object, else 400."""
    request = decode_request(body)
    if not isinstance(request, dict):
        raise ApiError(400, "request body must be a JSON object")
    return request


def translate_request(route: ApiRoute, request: dict[str, Any]) -> bytes:
    """The client's request (`decode_object`), rewritten in the engine's dialect."""
    try:
        if route.dialect is Dialect.ANTHROPIC:
            translated = messages_to_chat_request(request)
        else:
            translated = chat_request_to_messages(request)
    except DialectError as exc:
        raise api_error(exc) from None
    return msgspec.json.encode(translated)


async def count_translated_prompt(
    client: UpstreamClient,
    provider: Provider,
    prompt: Mapping[str, Any],
    exchange: Exchange,
    response_timeout: float,
) -> None:
    """Count a translated stream's prompt before it goes to an OpenAI engine.

    Anthropic's stream opens with `message_start`, whose usage has the input tokens,
    before the first generated token; the Responses API's ends with the usage. An
    OpenAI engine tells its usage at the end if at all (with `include_usage`;
    llama-cpp-python never does). So the prompt (`prompt`: Anthropic's request, or the
    translated chat request, whose messages have the same text parts) is counted first,
    exactly as count_tokens counts it: the engine's tokenizer, else an estimate
    (`x-gate-token-count: estimate` on the response). Before the request and not beside
    it: llama-cpp-python ends a running stream when another request comes.
    """
    if not exchange.stream:
        return
    exchange.prompt_count = await count_prompt_tokens(
        client, provider, exchange.model, prompt_text(prompt), response_timeout
    )


def _counted_headers(exchange: Exchange) -> tuple[int, list[tuple[bytes, bytes]]]:
    """A translated stream's headers, and its prompt's tokens as counted (0 if not)."""
    if exchange.prompt_count is None:
        return 0, _SSE_HEADERS
    input_tokens, exact = exchange.prompt_count
    return input_tokens, [
        *_SSE_HEADERS,
        (b"x-gate-token-count", b"engine" if exact else b"estimate"),
    ]


def stream_head(exchange: Exchange) -> list[tuple[bytes, bytes]]:
    """The headers of a stream Gate opens itself: an event stream, and how its prompt
    was counted when it was (a translated one's)."""
    return _counted_headers(exchange)[1]


def translated_response(route: ApiRoute, provider: Provider) -> Translation:
    """What writes the client's response on `route` from the other dialect's engine."""
    if route.dialect is Dialect.ANTHROPIC:
        return _openai_engine_to_anthropic_client
    return _anthropic_engine_to_openai_client


async def _openai_engine_to_anthropic_client(
    upstream: UpstreamResponse, send: Send, exchange: Exchange
) -> None:
    message_id = "msg_" + uuid.uuid4().hex[:24]
    if await _answered_at_once(
        upstream,
        send,
        exchange,
        Dialect.ANTHROPIC,
        lambda answer: chat_response_to_message(
            answer, model=exchange.model, message_id=message_id
        ),
        _ANTHROPIC_USAGE,
    ):
        return
    input_tokens, headers = _counted_headers(exchange)
    translator = ChatStreamToMessagesStream(exchange.model, message_id, input_tokens)

    def finished(closing: list[Event]) -> None:
        # The usage told the client: the engine's, else Gate's count.
        for name, data in closing:
            if name == "message_delta":
                _take_usage(exchange, data["usage"], *_ANTHROPIC_USAGE)

    await _relay_chat_stream(upstream, send, exchange, translator, headers, finished)


def chat_engine_to_responses_client(
    request: Mapping[str, Any], keep: Callable[[dict[str, Any]], None]
) -> Translation:
    """What writes a Responses client's response from a Chat Completions engine's answer
    to `request` (translated by `responses_to_chat_request`). `keep` gets the finished
    response object (completed or incomplete, never failed), for the conversation state."""

    async def respond(upstream: UpstreamResponse, send: Send, exchange: Exchange) -> None:
        response_id, created_at = new_response_id(), int(time.time())
        if await _answered_at_once(
            upstream,
            send,
            exchange,
            Dialect.OPENAI,
            lambda answer: chat_response_to_response(
                answer,
                request,
                response_id=response_id,
                model=exchange.model,
                created_at=created_at,
            ),
            _RESPONSES_USAGE,
            keep,
        ):
            return
        input_tokens, headers = _counted_headers(exchange)
        translator = ChatStreamToResponsesStream(
            request,
            response_id=response_id,
            model=exchange.model,
            created_at=created_at,
            input_tokens_hint=input_tokens,
        )

        def finished(_: list[Event]) -> None:
            assert translator.response is not None
            _take_usage(exchange, translator.response.get("usage"), *_RESPONSES_USAGE)
            keep(translator.response)

        await _relay_chat_stream(upstream, send, exchange, translator, headers, finished)

    return respond


async def _relay_chat_stream(
    upstream: UpstreamResponse,
    send: Send,
    exchange: Exchange,
    translator: ChatChunkTranslator[Any],
    headers: list[tuple[bytes, bytes]],
    finished: Callable[[list[Event]], None],
) -> None:
    """An OpenAI engine's chat stream, translated event by event as it arrives into the
    client's named events (Anthropic's, or the Responses API's); `finished` sees the
    closing events once the engine's [DONE] came. The opening events go out at once,
    and a keepalive in every silence of `exchange.keepalive` seconds (a long prompt
    keeps the engine silent before its first token). A failure mid-way: the
    translator's error event, then the aborted response."""
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    failed = False
    async with kept_alive(send, translator.KEEPALIVE, exchange.keepalive) as client:
        # Errors are caught inside kept_alive's nursery so they leave it as themselves.
        try:
            await client.send(sse_bytes(translator.start()))
            await _translate_chat_stream(upstream, client, exchange, translator, finished)
        except (UpstreamError, DialectError) as exc:
            exchange.status, exchange.error = 502, f"engine failed mid-stream: {exc}"
            tail = translator.fail(f"the engine failed mid-stream: {exc}")
            await client.send(sse_bytes(tail), last=True)
            failed = True
    if failed:
        raise AbortResponse
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _translate_chat_stream(
    upstream: UpstreamResponse,
    client: KeptAlive,
    exchange: Exchange,
    translator: ChatChunkTranslator[Any],
    finished: Callable[[list[Event]], None],
) -> None:
    """The body of `_relay_chat_stream`: the engine's chunks in, the client's events out."""
    decoder = SSEDecoder()
    done = False
    reported = False  # the engine told its usage
    async with aclosing(upstream.aiter_body()) as body_chunks:
        async for chunk in body_chunks:
            exchange.first_byte()
            out: list[Event] = []
            with _engine_output():
                for event in decoder.feed(chunk):
                    if done:
                        break  # nothing follows [DONE]
                    if event.data == "[DONE]":
                        closing = translator.finish()
                        out += closing
                        done = True
                        finished(closing)
                        if not reported:  # the counts are Gate's: which kind
                            counted = exchange.prompt_count
                            estimated = counted is None or not counted[1]
                            exchange.tokens_source = "estimate" if estimated else "counted"
                    elif event.data:
                        data = msgspec.json.decode(event.data)
                        if isinstance(data, Mapping) and "error" in data:
                            raise UpstreamError(error_message(data))
                        out += translator.feed(data)
                        reported = reported or isinstance(data.get("usage"), Mapping)
                        _take_usage(exchange, data.get("usage"), *_CHAT_USAGE)
            if out:  # [DONE]'s closing events are the stream's last
                await client.send(sse_bytes(out), last=done)
            exchange.answered = done
    if not done:  # OpenAI streams end with [DONE]; anything else was cut off
        raise UpstreamError("the stream ended before [DONE]")


async def _anthropic_engine_to_openai_client(
    upstream: UpstreamResponse, send: Send, exchange: Exchange
) -> None:
    if await _answered_at_once(
        upstream,
        send,
        exchange,
        Dialect.OPENAI,
        lambda answer: message_to_chat_response(answer, model=exchange.model),
        _CHAT_USAGE,
    ):
        return
    completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
    translator = MessagesStreamToChatStream(
        exchange.model,
        completion_id,
        created=int(time.time()),
        include_usage=exchange.include_usage,
    )
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    decoder = SSEDecoder()
    failed = False
    try:
        async with aclosing(upstream.aiter_body()) as body_chunks:
            async for chunk in body_chunks:
                exchange.first_byte()
                out: list[dict[str, Any]] = []
                with _engine_output():
                    for event in decoder.feed(chunk):
                        if translator.done:
                            break  # nothing follows message_stop or an error
                        if not event.data:
                            continue
                        data = msgspec.json.decode(event.data)
                        if isinstance(data, Mapping):
                            usage = data.get("usage") or (data.get("message") or {}).get("usage")
                            _take_usage(exchange, usage, *_ANTHROPIC_USAGE)
                            out += translator.feed(event.event, data)
                if out:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": chat_sse_bytes(out),
                            "more_body": True,
                        }
                    )
        if not translator.done:
            raise UpstreamError("the stream ended before message_stop")
        if translator.failed:  # the engine's own error event, relayed
            failed = True
            exchange.status, exchange.error = 502, "the engine reported an error mid-stream"
    except (UpstreamError, DialectError) as exc:
        failed = True
        exchange.status, exchange.error = 502, f"engine failed mid-stream: {exc}"
        if not translator.done:
            await send(
                {
                    "type": "http.response.body",
                    "body": chat_sse_bytes(translator.fail(f"the engine failed: {exc}")),
                    "more_body": True,
                }
            )
    # OpenAI ends a good stream with [DONE]; a failed one is aborted after its error payload.
    if failed:
        raise AbortResponse
    await send({"type": "http.response.body", "body": SSE_DONE, "more_body": False})


async def _answered_at_once(
    upstream: UpstreamResponse,
    send: Send,
    exchange: Exchange,
    dialect: Dialect,
    translate: Callable[[Any], dict[str, Any]],
    usage_keys: tuple[str, str],
    keep: Callable[[dict[str, Any]], None] | None = None,
) -> bool:
    """Answers the client now unless the engine streams: an engine error status in the
    client's `dialect`, or the engine's whole answer through `translate` (its usage read
    by `usage_keys`; `keep` sees it before it goes). False: a stream is to be translated."""
    if upstream.status >= 400:
        await answer_engine_error(upstream, send, exchange, dialect, f"engine {exchange.provider}")
        return True
    if _is_sse(upstream):
        return False
    answer = await _read_json(upstream, exchange)
    result = _or_bad_gateway(lambda: translate(answer))
    _take_usage(exchange, result.get("usage"), *usage_keys)
    if keep is not None:
        keep(result)
    await send_json(send, 200, result)
    return True


def _is_sse(upstream: UpstreamResponse) -> bool:
    return (upstream.header(b"content-type") or b"").startswith(b"text/event-stream")


async def _read_json(upstream: UpstreamResponse, exchange: Exchange) -> Any:
    try:
        body = await upstream.read(limit=_MAX_BODY)
    except UpstreamError as exc:
        raise api_error(exc, "engine") from None
    exchange.first_byte()
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise ApiError(502, "engine answered with a body that is not JSON") from None
    except RecursionError:
        raise ApiError(502, "engine answered with JSON nested too deep to read") from None


def _or_bad_gateway(translate: Any) -> dict[str, Any]:
    try:
        with _engine_output():
            result: dict[str, Any] = translate()
    except DialectError as exc:  # a MalformedUpstream: 502
        raise api_error(exc, "engine response") from None
    return result


@contextmanager
def _engine_output() -> Iterator[None]:
    """Around the pure work on engine output: decoding and translating it.

    Whatever the output made that work raise (MalformedUpstream from a translator, a
    DecodeError, or a TypeError on `"choices": 5` that no check foresaw) is the engine
    sending what cannot be translated: it leaves as MalformedUpstream, which the callers
    answer with a 502 or the dialect's stream error, never a 500 or a cut connection.
    Logged here, once per exchange (translation stops at the first failure), and
    without a traceback: a broken engine must not flood the log with them.
    """
    try:
        yield
    except UpstreamError:
        raise  # the engine failed or reported an error: not a question of its output
    except Exception as exc:
        _log.warning(
            "engine output cannot be translated", extra={"error": f"{type(exc).__name__}: {exc}"}
        )
        if isinstance(exc, MalformedUpstream):
            raise
        if isinstance(exc, DialectError):  # a translator's own complaint: still the output's
            raise MalformedUpstream(str(exc)) from None
        raise MalformedUpstream(f"{type(exc).__name__}: {exc}") from None


def _take_usage(exchange: Exchange, usage: Any, key_in: str, key_out: str) -> None:
    if not isinstance(usage, Mapping):
        return
    if isinstance(usage.get(key_in), int):
        exchange.tokens_in = usage[key_in]
    if isinstance(usage.get(key_out), int):
        exchange.tokens_out = usage[key_out]
