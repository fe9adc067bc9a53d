"""The Responses API (/v1/responses) for engines that lack it.

Codex CLI, and any client written against OpenAI's Responses API, speaks only that
endpoint. Ollama (0.13 and later), vLLM, LM Studio and OpenAI serve it, and get it byte
for byte; llama-cpp-python's server and older engines answer 404, and get the request
translated to Chat Completions (gate.dialects.responses_chat).

How Gate tells them apart: by trying. A /v1/responses request goes to the engine as it
is; an engine that answers 404 or 405 is asked again at once, the same request
translated to /v1/chat/completions, so the client never sees that 404. When the
translated try is not a 404/405 itself (which would mean the model, not the endpoint,
is missing), the engine is remembered as lacking the endpoint, and its later requests
go translated straight away, until its configuration entry changes or Gate restarts
(the memory is per `Provider` object, which a reconfiguration replaces). The engine
kind alone cannot say: llama.cpp's own server, Ollama and LM Studio gained the
endpoint in later versions, and an `openai_compatible` engine may be anything.

State: see `conversations.Conversations`. A request whose `previous_response_id` is one
Gate produced goes translated even to an engine with its own /v1/responses, since only
Gate knows that conversation.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, Final

import msgspec

from gate.dialects import DialectError, assistant_turn, responses_to_chat_request
from gate.services.engines.registry import Provider
from gate.services.gateway.conversations import Conversations
from gate.services.gateway.exchange import ApiError, Translation, api_error
from gate.services.gateway.translated import chat_engine_to_responses_client, decode_object

__all__ = ["CHAT_PATH", "ResponsesBridge"]

CHAT_PATH: Final = "/v1/chat/completions"
# What an engine without the endpoint answers: FastAPI's (llama-cpp-python) and most
# servers' 404 for an unknown path, 405 from servers that route by path before method.
_LACKING: Final = frozenset({404, 405})
_log = logging.getLogger("gate.gateway")


class _Previous(msgspec.Struct):
    previous_response_id: Any = None


_decode_previous = msgspec.json.Decoder(_Previous).decode


class ResponsesBridge:
    """Which engines get /v1/responses translated, the translation, and its state."""

    def __init__(self, conversations: Conversations | None = None) -> None:
        self.conversations = conversations if conversations is not None else Conversations()
        self._lacking: weakref.WeakSet[Provider] = weakref.WeakSet()

    def lacks_endpoint(self, provider: Provider) -> bool:
        """Whether `provider` is known to answer /v1/responses with 404/405."""
        return provider in self._lacking

    def translates(self, provider: Provider, body: bytes) -> bool:
        """Whether this request goes to `provider` translated from the first try."""
        if provider in self._lacking:
            return True
        if b'"previous_response_id"' not in body:  # the common case: nothing decoded
            return False
        try:
            previous = _decode_previous(body).previous_response_id
        except (msgspec.DecodeError, RecursionError):
            return False  # the engine will say what is wrong with it
        return isinstance(previous, str) and previous in self.conversations

    @staticmethod
    def missing_endpoint(status: int) -> bool:
        """Whether an engine's status to a /v1/responses request may mean it lacks it."""
        return status in _LACKING

    def learn(self, provider: Provider, translated_status: int) -> None:
        """The engine said 404/405 to /v1/responses and `translated_status` to the same
        request translated: unless that is 404/405 too, it lacks the endpoint."""
        if translated_status in _LACKING or provider in self._lacking:
            return
        self._lacking.add(provider)
        _log.info(
            "engine has no /v1/responses: translating to chat completions",
            extra={"provider": provider.name},
        )

    def prepare(self, body: bytes, client: str) -> tuple[dict[str, Any], Translation]:
        """The request translated for a Chat Completions engine, and what writes the
        client's response. 404 for a previous_response_id Gate does not have."""
        request = decode_object(body)
        previous = request.get("previous_response_id")
        history: list[dict[str, Any]] = []
        if previous is not None:
            if not isinstance(previous, str):
                raise ApiError(400, "previous_response_id: must be a string")
            found = self.conversations.history(previous, client)
            if found is None:
                # OpenAI's own answer, word for word, so clients handle it as they would.
                raise ApiError(
                    404,
                    f"Previous response with id '{previous}' not found.",
                    type="invalid_request_error",
                    code="previous_response_not_found",
                )
            history = found
        try:
            chat, turns = responses_to_chat_request(request, history)
        except DialectError as exc:
            raise api_error(exc) from None
        keep = self._keeper(request, client, previous, turns[len(history) :])
        return chat, chat_engine_to_responses_client(request, keep)

    def _keeper(
        self,
        request: dict[str, Any],
        client: str,
        previous: str | None,
        new_turns: list[dict[str, Any]],
    ) -> Callable[[dict[str, Any]], None]:
        def keep(response: dict[str, Any]) -> None:
            if request.get("store") is False or response.get("status") == "failed":
                return
            turn = assistant_turn(response.get("output") or ())
            turns = [*new_turns, turn] if turn is not None else new_turns
            self.conversations.keep(response["id"], client, previous, turns)

        return keep
