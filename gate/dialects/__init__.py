"""Translation between the OpenAI and Anthropic API dialects, sans-IO.

Pure functions and small state machines over decoded JSON (dicts): no trio, no
sockets, no HTTP client, no clock (tests/dialects/test_exports.py checks). The
service layer decodes bodies and SSE, calls these, and writes what comes back.

* `sse`: the event-stream codec both APIs stream with.
* `anthropic_openai` (+ `_stream`): an Anthropic Messages client in front of an
  OpenAI Chat Completions engine (llama.cpp, vLLM, Ollama...).
* `openai_anthropic` (+ `_stream`): an OpenAI Chat Completions client in front of the
  Anthropic Messages API.
* `responses_chat` (+ `_stream`): an OpenAI Responses API client in front of a Chat
  Completions engine (one without /v1/responses, such as llama-cpp-python's server).
* `chat_chunks`: what the two translators of a Chat Completions engine's stream share
  (`ChatChunkTranslator`, their base).
* `errors`: error bodies and mid-stream error events in each dialect, and the
  errors the translators raise (each carrying its HTTP status).

The public names are re-exported here on purpose; the submodules are implementation.
"""

from gate.dialects._shared import RAW_ARGUMENTS_KEY
from gate.dialects.anthropic_openai import (
    ChatStreamToMessagesStream,
    chat_response_to_message,
    messages_to_chat_request,
    sse_bytes,
)
from gate.dialects.chat_chunks import ChatChunkTranslator
from gate.dialects.errors import (
    DialectError,
    InvalidRequest,
    MalformedUpstream,
    TranslatorClosed,
    anthropic_error,
    anthropic_stream_error,
    openai_error,
    openai_model_not_found,
    openai_stream_error,
)
from gate.dialects.openai_anthropic import (
    DEFAULT_MAX_TOKENS,
    SSE_DONE,
    MessagesStreamToChatStream,
    chat_request_to_messages,
    chat_sse_bytes,
    message_to_chat_response,
)
from gate.dialects.responses_chat import (
    ChatStreamToResponsesStream,
    assistant_turn,
    chat_response_to_response,
    new_response_id,
    responses_to_chat_request,
)
from gate.dialects.sse import DEFAULT_MAX_EVENT_SIZE, SSEDecoder, SSEEvent, encode_event

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_MAX_TOKENS",
    "RAW_ARGUMENTS_KEY",
    "SSE_DONE",
    "ChatChunkTranslator",
    "ChatStreamToMessagesStream",
    "ChatStreamToResponsesStream",
    "DialectError",
    "InvalidRequest",
    "MalformedUpstream",
    "MessagesStreamToChatStream",
    "SSEDecoder",
    "SSEEvent",
    "TranslatorClosed",
    "anthropic_error",
    "anthropic_stream_error",
    "assistant_turn",
    "chat_request_to_messages",
    "chat_response_to_message",
    "chat_response_to_response",
    "chat_sse_bytes",
    "encode_event",
    "message_to_chat_response",
    "messages_to_chat_request",
    "new_response_id",
    "openai_error",
    "openai_model_not_found",
    "openai_stream_error",
    "responses_to_chat_request",
    "sse_bytes",
]
