"""The gateway's answers to hostile or broken input, through the real app on loopback.

Each test runs Gate's Router, Gateway and hypercorn in this process (tests/services/
gateway_app.py) with engine stand-ins, and talks to it with httpx as a client would.
"""

from __future__ import annotations

import gc
import logging
import time
import tracemalloc
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest
import trio

from gate.dialects.errors import anthropic_error
from gate.services.engines.client import StreamedResponse, UpstreamDisconnected
from gate.services.engines.registry import Dialect
from gate.services.gateway.exchange import API_ROUTES, MAX_JSON_DEPTH, Exchange
from gate.services.gateway.metrics import UNKNOWN
from gate.services.gateway.pipeline import MAX_MODEL_NAME
from gate.services.gateway.response import AbortResponse, pass_through
from tests.services.gateway_app import answering_engine, engine, running_gate, serve_engine

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


def assert_client_error(response: httpx.Response, path: str, status: int = 400) -> str:
    """The error is `status` in the dialect of `path`; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"
        assert body["error"]["type"] == anthropic_error(status, "")["error"]["type"]
    else:
        assert body["error"]["type"] == "invalid_request_error"
        assert isinstance(body["error"]["message"], str)
    message: str = body["error"]["message"]
    return message


async def assert_still_serving(http: httpx.AsyncClient) -> None:
    chat = await http.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "hi"
    message = await http.post("/v1/messages", json=MESSAGES, headers=ANTHROPIC)
    assert message.status_code == 200 and message.json()["content"][0]["text"] == "hi"


# --- deeply nested JSON ----------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("path", [endpoint.path for endpoint in API_ROUTES])
async def test_deeply_nested_json_is_a_400_in_the_clients_dialect(path: str) -> None:
    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, answering_engine)
        async with (
            running_gate([engine("e", url, "m")]) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(30):
                for body in (
                    b'{"model": "m", "messages": ' + DEEP + b"}",
                    b'{"messages": ' + DEEP + b', "model": "m", "stream": true}',
                    DEEP,
                ):
                    response = await http.post(path, content=body, headers=ANTHROPIC)
                    assert_client_error(response, path)
                await assert_still_serving(http)
        nursery.cancel_scope.cancel()


async def test_an_engine_body_nested_deep_is_relayed_as_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Gate reads token counts off relayed bodies; a body it cannot read is still the
    engine's answer to pass on, not a reason to cut the client off."""
    answer = b'{"usage": {"prompt_tokens": 1}, "x": ' + DEEP + b"}"

    async def deep_engine(path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
        return 200, "application/json", answer

    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, deep_engine)
        async with (
            running_gate([engine("e", url, "m")]) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(30):
                response = await http.post("/v1/chat/completions", json=CHAT)
                assert response.status_code == 200 and response.content == answer
        nursery.cancel_scope.cancel()
    # Once the app has drained: the request ended well, and was counted.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert b'endpoint="chat.completions",status="200"} 1' in gate.metrics.render()


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("path", "engine_kind"),
    [
        ("/v1/messages", "llamacpp"),
        ("/v1/messages/count_tokens", "llamacpp"),
        ("/v1/chat/completions", "anthropic"),
    ],
)
async def test_bodies_gate_translates_nest_at_most_the_limit(path: str, engine_kind: str) -> None:
    """Gate builds and walks the bodies it translates, so their depth is bounded well
    below the interpreter's recursion limit."""
    deep = MAX_JSON_DEPTH + 10
    if path.startswith("/v1/messages"):
        tool = {"name": "t", "input_schema": nested_schema(deep)}
    else:
        tool = {"type": "function", "function": {"name": "t", "parameters": nested_schema(deep)}}
    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, answering_engine)
        async with (
            running_gate([engine("e", url, "m", kind=engine_kind)]) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(30):
                body = {**(CHAT if path == "/v1/chat/completions" else MESSAGES), "tools": [tool]}
                response = await http.post(path, json=body, headers=ANTHROPIC)
                assert str(MAX_JSON_DEPTH) in assert_client_error(response, path)
        nursery.cancel_scope.cancel()


# --- model names -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_an_over_long_model_name_is_a_400_naming_the_limit(path: str) -> None:
    body = CHAT if path == "/v1/chat/completions" else MESSAGES
    async with (
        running_gate([engine("e", "http://127.0.0.1:9", "m")]) as gate,
        httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
    ):
        with trio.fail_after(30):
            longest = await http.post(
                path, json={**body, "model": "x" * MAX_MODEL_NAME}, headers=ANTHROPIC
            )
            assert longest.status_code == 404  # a name of the longest length is only unknown
            for model in ("x" * (MAX_MODEL_NAME + 1), "y" * 2_000_000):
                response = await http.post(path, json={**body, "model": model}, headers=ANTHROPIC)
                message = assert_client_error(response, path)
                assert str(MAX_MODEL_NAME) in message
                assert len(response.content) < 1000  # the name is not echoed back


async def test_unknown_model_names_share_one_metrics_series_and_memory_stays_bounded() -> None:
    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, answering_engine)
        async with (
            running_gate([engine("e", url, "m")], aliases={"fast": "m"}) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(60):
                for i in range(50):
                    response = await http.post(
                        "/v1/chat/completions", json={**CHAT, "model": f"no-such-model-{i}"}
                    )
                    assert response.status_code == 404
                for model in ("m", "fast"):
                    response = await http.post(
                        "/v1/chat/completions", json={**CHAT, "model": model}
                    )
                    assert response.status_code == 200

                gc.collect()
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    for i in range(20):
                        name = f"{i}-" + "z" * 2_000_000
                        response = await http.post(
                            "/v1/chat/completions", json={**CHAT, "model": name}
                        )
                        assert response.status_code == 400
                    del name
                    gc.collect()
                    retained = tracemalloc.get_traced_memory()[0] - before
                finally:
                    tracemalloc.stop()
                # The last request's body may still be referenced (its handler ends after
                # its answer went out): a few MB. Keeping the 20 names would be 40 MB.
                assert retained < 10_000_000

                metrics = gate.metrics.render().decode()
                in_flight = [
                    line
                    for line in metrics.splitlines()
                    if line.startswith("gate_requests_in_flight{")
                ]
                assert sorted(in_flight) == [
                    'gate_requests_in_flight{provider="e",model="m"} 0',  # "fast" included
                    'gate_requests_in_flight{provider="none",model="none"} 0',  # the 400s
                    f'gate_requests_in_flight{{provider="none",model="{UNKNOWN}"}} 0',
                ]
                assert "no-such-model" not in metrics and "zzz" not in metrics
                assert (
                    'gate_requests_total{provider="none",model="unknown",'
                    'endpoint="chat.completions",status="404"} 50'
                ) in metrics
                assert 'model="m",endpoint="chat.completions",status="200"} 2' in metrics
                assert len(metrics) < 20_000
                await assert_still_serving(http)
        nursery.cancel_scope.cancel()


# --- bodies as the engine gets them --------------------------------------------------------


async def engine_request(kind: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body an engine of `kind` receives for `body` posted to Gate's `path`."""
    received: list[dict[str, Any]] = []

    async def recording(engine_path: str, request: dict[str, Any]) -> tuple[int, str, bytes]:
        received.append(request)
        return await answering_engine(engine_path, request)

    async with trio.open_nursery() as nursery:
        url = await serve_engine(nursery, recording)
        async with (
            running_gate([engine("e", url, "m", kind=kind)]) as gate,
            httpx.AsyncClient(base_url=gate.url, timeout=10) as http,
        ):
            with trio.fail_after(30):
                response = await http.post(path, json=body, headers=ANTHROPIC)
                assert response.status_code == 200, response.text
        nursery.cancel_scope.cancel()
    (request,) = received
    return request


@pytest.mark.parametrize(
    ("kind", "sent", "expected"),
    [
        ("llamacpp", {"max_completion_tokens": 5}, {"max_completion_tokens": 5, "max_tokens": 5}),
        ("ollama", {"max_completion_tokens": 5}, {"max_completion_tokens": 5, "max_tokens": 5}),
        ("vllm", {"max_completion_tokens": 5}, {"max_completion_tokens": 5, "max_tokens": 5}),
        ("lmstudio", {"max_completion_tokens": 5}, {"max_completion_tokens": 5, "max_tokens": 5}),
        # Both given: the client's own choice stands.
        (
            "llamacpp",
            {"max_completion_tokens": 5, "max_tokens": 7},
            {"max_completion_tokens": 5, "max_tokens": 7},
        ),
        ("llamacpp", {}, {}),
        # The OpenAI API (its reasoning models refuse `max_tokens`) and unknown servers.
        ("openai", {"max_completion_tokens": 5}, {"max_completion_tokens": 5}),
        ("openai_compatible", {"max_completion_tokens": 5}, {"max_completion_tokens": 5}),
    ],
)
async def test_max_completion_tokens_reaches_local_engines_as_max_tokens(
    kind: str, sent: dict[str, Any], expected: dict[str, Any]
) -> None:
    request = await engine_request(kind, "/v1/chat/completions", {**CHAT, **sent})
    assert request == {**CHAT, **expected}


async def test_system_messages_among_the_turns_reach_the_anthropic_api_as_sent() -> None:
    body = {
        **MESSAGES,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "cwd: /tmp"}]},
        ],
    }
    assert await engine_request("anthropic", "/v1/messages", body) == body


# --- a stream relayed as it arrives, failing mid-way -----------------------------------


class _FailingStream(StreamedResponse):
    """An engine's or a peer's stream: `parts`, then the connection lost."""

    def __init__(self, *parts: bytes) -> None:
        self.status = 200
        self.headers = [(b"content-type", b"text/event-stream")]
        self.parts = parts

    async def aiter_body(self) -> AsyncGenerator[bytes, None]:
        for part in self.parts:
            yield part
        raise UpstreamDisconnected("peer p: connection lost")

    async def aclose(self) -> None:
        pass


_CHUNK = b'data: {"choices": []}\n\n'
_PEERS_ERROR = b'data: {"error":{"message":"engine x failed","type":"server_error"}}\n\n'


@pytest.mark.parametrize(
    ("parts", "relayed"),
    [
        ((_CHUNK,), [_CHUNK]),  # Gate adds the error event
        ((_CHUNK, _PEERS_ERROR), [_CHUNK, _PEERS_ERROR]),  # the peer sent one: not twice
    ],
)
async def test_a_relayed_stream_cut_off_gets_one_error_event_and_is_aborted(parts, relayed):
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    exchange = Exchange(API_ROUTES[0], time.perf_counter())
    with pytest.raises(AbortResponse):
        await pass_through(_FailingStream(*parts), send, exchange, Dialect.OPENAI, "peer p")
    bodies = [m["body"] for m in sent[1:]]
    assert all(m["more_body"] for m in sent[1:])  # never the last part: the server aborts
    assert bodies[: len(relayed)] == relayed
    errors = [b for b in bodies if b.startswith(b'data: {"error"')]
    assert len(errors) == 1 and exchange.status == 502
