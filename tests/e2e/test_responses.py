"""The Responses API through Gate: real `gate serve`, real llama.cpp engine, the official
openai SDK.

llama-cpp-python's server has no /v1/responses (it answers 404), so Gate translates
these requests to Chat Completions, keeps the conversations for previous_response_id,
and remembers that this engine lacks the endpoint. The tiny model writes random bytes:
forbidding its end-of-sequence token makes a reply exactly max_output_tokens long (so
it ends `incomplete`, as OpenAI reports a reply cut at the cap), and a forced tool call,
its arguments constrained to an enum, completes.
"""

from __future__ import annotations

import http.server
import json
import pathlib
import signal
import sqlite3
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from .conftest import engine_config
from .gate_process import data_dir
from .test_gateway import MODEL, oai
from .test_routing import providers_used

pytestmark = pytest.mark.e2e

NO_EOS = {"2": -100}  # token 2 is </s> in the tiny model
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
        "required": ["city"],
    },
}
FORCE_WEATHER = {"type": "function", "name": "get_weather"}
CODEX_REQUEST = (
    pathlib.Path(__file__).parent.parent / "fixtures/clients/codex_responses_source.json"
)


@pytest.fixture
def gate(start_gate, llama_engine):
    return start_gate(engine_config(llama_engine))


def _no_eos(**extra):
    return {"extra_body": {"logit_bias": NO_EOS}, **extra}


def test_a_response_not_streamed(gate):
    with oai(gate) as client:
        response = client.responses.create(
            model=MODEL, input="hi", instructions="Be brief.", max_output_tokens=5
        )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL and response.instructions == "Be brief."
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text
    assert response.usage.output_tokens > 0 and response.usage.input_tokens > 0
    usage = response.usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    if response.status == "incomplete":  # cut at the cap, as OpenAI reports it
        assert response.incomplete_details.reason == "max_output_tokens"
        assert usage.output_tokens == 5
    else:
        assert response.status == "completed"


def test_a_streamed_response_event_by_event(gate):
    with oai(gate) as client:
        events = list(
            client.responses.create(
                model=MODEL, input="hi", max_output_tokens=6, stream=True, **_no_eos()
            )
        )
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 6,  # one byte-token each
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == deltas == events[-4].text
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 6 and final.id == events[0].response.id
    # llama-cpp-python tells no usage on a stream: Gate counted the prompt with its tokenizer.
    assert final.usage.input_tokens >= len("hi")


def test_the_sdk_stream_helper_with_a_forced_tool_and_the_second_turn(gate):
    with oai(gate) as client:
        with client.responses.stream(
            model=MODEL,
            input="Weather in Paris?",
            tools=[WEATHER],
            tool_choice=FORCE_WEATHER,
            max_output_tokens=64,
        ) as stream:
            kinds = [event.type for event in stream]
            first = stream.get_final_response()
        assert "response.function_call_arguments.delta" in kinds
        assert kinds[-1] == "response.completed"
        assert first.status == "completed"
        (call,) = first.output
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments)["city"] in ("Paris", "Oslo", "Lima")
        # The second turn: only the tool's output, the rest from Gate's memory.
        second = client.responses.create(
            model=MODEL,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}],
            tools=[WEATHER],
            max_output_tokens=4,
        )
    assert second.output and second.previous_response_id == first.id
    # The engine saw the whole conversation: more than the first turn's prompt and reply.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_previous_response_id_carries_the_conversation(gate):
    with oai(gate) as client:
        first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=3)
        second = client.responses.create(
            model=MODEL,
            input="What is my name?",
            previous_response_id=first.id,
            max_output_tokens=3,
        )
        alone = client.responses.create(model=MODEL, input="What is my name?", max_output_tokens=3)
        third = client.responses.create(
            model=MODEL,
            input="Again?",
            previous_response_id=second.id,
            max_output_tokens=3,
            stream=True,
        )
        final = [event for event in third][-1].response
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.input_tokens // 2
    assert final.previous_response_id == second.id and final.status in ("completed", "incomplete")
    # A stream from llama-cpp-python tells no usage: Gate counted the whole chain's prompt
    # with the engine's tokenizer (one token per byte of text, at least).
    asked = ("My name is Ada.", "What is my name?", "Again?")
    assert final.usage.input_tokens > sum(map(len, asked))


def test_an_unknown_or_unstored_previous_response_is_not_found(gate):
    with oai(gate) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
        assert caught.value.body["message"] == "Previous response with id 'resp_nope' not found."
        assert caught.value.body["code"] == "previous_response_not_found"
        unstored = client.responses.create(
            model=MODEL, input="hi", store=False, max_output_tokens=2
        )
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="hi", previous_response_id=unstored.id)


def test_codex_cli_request_shape_streams_through(start_gate, make_llama_engine):
    """The request Codex CLI builds (codex-rs: ResponsesApiRequest in codex-api's
    common.rs, tools from client_common.rs' ToolSpec), written from its source: hosted
    and freeform tools are dropped, reasoning items too, the rest reaches the engine.
    (Its prompt, one token per byte here, needs more context than the shared engine's.)"""
    gate = start_gate(engine_config(make_llama_engine(n_ctx=8192)))
    request = json.loads(CODEX_REQUEST.read_text())
    request["max_output_tokens"] = 8
    with httpx.stream("POST", f"{gate.url}/v1/responses", json=request, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert names == [data["type"] for data in datas]
    assert names[0] == "response.created" and names[-1] in (
        "response.completed",
        "response.incomplete",
    )
    final = datas[-1]["response"]
    assert final["store"] is False and final["tool_choice"] == "auto"
    assert final["parallel_tool_calls"] is False


def test_the_engine_is_learned_once(gate, gate_env):
    """The first request finds the 404 and retries translated; the next go translated
    straight away. Both are one request in the usage log, answered 200."""
    with oai(gate) as client:
        for _ in range(2):
            assert client.responses.create(model=MODEL, input="hi", max_output_tokens=1).output
    gate.signal(signal.SIGTERM)
    gate.wait()
    log = (data_dir(gate_env) / "logs" / "gate.log").read_text()
    assert log.count("engine has no /v1/responses") == 1
    assert providers_used(gate_env) == ["llama", "llama"]


# --- an engine with its own /v1/responses ------------------------------------------------

NATIVE_BODY = (
    b'{"id":"resp_native","object":"response","created_at":1,"status":"completed",'
    b'"model":"native","output":[],"parallel_tool_calls":true,"tool_choice":"auto",'
    b'"tools":[],"extra":"kept as the engine wrote it"}'
)


class _NativeHandler(http.server.BaseHTTPRequestHandler):
    """An engine that serves /v1/responses itself (as Ollama >= 0.13, vLLM, LM Studio
    do; none of them can run here): it answers every POST with the same bytes."""

    seen: list[str] = []

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        body = b'{"object":"list","data":[{"id":"native","object":"model"}]}'
        self._answer(200, body)

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.seen.append(self.path)
        self._answer(200, NATIVE_BODY)

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def native_engine() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NativeHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _NativeHandler.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_engine_with_the_endpoint_gets_it_byte_for_byte(start_gate, native_engine):
    gate = start_gate(
        "[providers]\nhealth_interval = 1.0\n[[providers.engines]]\nname = 'native'\n"
        f"kind = 'openai_compatible'\nbase_url = '{native_engine}'\n"
    )
    for _ in range(2):
        response = httpx.post(
            f"{gate.url}/v1/responses",
            json={"model": "native", "input": "hi", "previous_response_id": "resp_x"},
            timeout=30,
        )
        assert response.status_code == 200 and response.content == NATIVE_BODY
    assert _NativeHandler.seen == ["/v1/responses", "/v1/responses"]


@pytest.mark.parametrize(
    ("path", "body", "closing"),
    [
        (
            "/v1/responses",
            {"model": MODEL, "input": "hi", "max_output_tokens": 4, "stream": True},
            b"event: response.incomplete",
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            | {"stream": True},
            b"data: [DONE]",
        ),
    ],
    ids=["responses", "chat"],
)
def test_a_client_that_hangs_up_once_it_has_the_answer_is_served(
    start_gate, llama_engine, gate_env, path, body, closing
):
    """Codex closes its connection as soon as `response.completed` is in, before the
    body's end; so does any client that stops at [DONE]. That is a request served (200,
    its tokens counted), not a client that left (499, its accounting cancelled)."""
    gate = start_gate(engine_config(llama_engine))
    body = {**body, "logit_bias": NO_EOS}
    for _ in range(3):
        with (
            httpx.Client(base_url=gate.url, timeout=30) as client,
            client.stream("POST", path, json=body) as response,
        ):
            assert response.status_code == 200
            seen = b""
            for chunk in response.iter_raw():
                seen += chunk
                if closing in seen:
                    break  # and hang up, the rest of the body unread
    gate.signal(signal.SIGTERM)
    assert gate.wait() == 0
    with sqlite3.connect(data_dir(gate_env) / "gate.db") as db:
        rows = db.execute("SELECT status, tokens_in, tokens_source FROM usage").fetchall()
    assert len(rows) == 3
    assert all(status == 200 and tokens_in for status, tokens_in, _ in rows), rows
