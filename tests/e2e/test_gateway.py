"""The local gateway end to end: real `gate serve`, real llama.cpp engine, official SDKs.

Every test talks to Gate over loopback exactly as a user's tool would. The engine is
llama.cpp's server on the tiny generated model; forbidding its end-of-sequence token
(logit_bias) makes it generate exactly max_tokens, so lengths are predictable.
"""

import contextlib
import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from .conftest import engine_config
from .gate_process import data_dir, run_gate
from .head_delay import HeadDelayingProxy

pytestmark = pytest.mark.e2e

MODEL = "tiny-llama"
NO_EOS = {"2": -100}  # token 2 is </s> in the tiny model
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            # An enum, so the grammar-constrained output of random weights must finish
            # the string (a free string would run on until max_tokens).
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
            "required": ["city"],
        },
    },
}
HI = [{"role": "user", "content": "hi"}]
# A stream of 1,900 tokens that cannot stop early: ~10 s on this engine, to cut or leave.
LONG_STREAM = {
    "model": MODEL,
    "messages": HI,
    "max_tokens": 1900,
    "stream": True,
    "logit_bias": NO_EOS,
}
ANTHROPIC_WEATHER_TOOL = {  # the same tool in Anthropic's shape
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}
# A Messages request that must call the tool (the enum lets random weights finish it).
FORCED_WEATHER = {
    "model": MODEL,
    "max_tokens": 64,
    "messages": HI,
    "tools": [ANTHROPIC_WEATHER_TOOL],
    "tool_choice": {"type": "tool", "name": "get_weather"},
}


@pytest.fixture
def gate(start_gate, llama_engine):
    return start_gate(engine_config(llama_engine))


def oai(gate, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gate.url}/v1",
        api_key=kwargs.pop("api_key", "unused"),
        max_retries=0,
        timeout=60,
        **kwargs,
    )


def ant(gate, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gate.url,
        api_key=kwargs.pop("api_key", "unused"),
        max_retries=0,
        timeout=60,
        **kwargs,
    )


def sse_lines(url: str, body: dict, **kwargs) -> list[str]:
    with httpx.stream("POST", url, json=body, timeout=60, **kwargs) as response:
        assert response.status_code == 200, response.read()
        return [line for line in response.iter_lines() if line]


def cut_stream(url: str, body: dict, cut, *, after: int = 5, **kwargs) -> list[str]:
    """The lines of a stream whose source `cut()` stops once `after` lines have come. The
    framing must tell the failure too: no terminating chunk, an incomplete chunked read."""
    lines: list[str] = []
    with (
        httpx.stream("POST", url, json=body, timeout=60, **kwargs) as response,
        pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
    ):
        for line in response.iter_lines():
            if line:
                lines.append(line)
            if len(lines) == after:
                cut()
    return lines


def hang_up_then_ask(url: str, body: dict) -> float:
    """Read five lines of a stream of `body` and hang up; then the seconds a one-token
    request to the same `url` takes to be answered (200), which is long if the stream
    left behind goes on taking the engine's time."""
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
    started = time.monotonic()
    reply = httpx.post(url, json={"model": MODEL, "messages": HI, "max_tokens": 1}, timeout=60)
    assert reply.status_code == 200
    return time.monotonic() - started


# --- OpenAI dialect, passed through ------------------------------------------------


def test_models_are_listed_in_both_dialects(gate):
    with oai(gate) as client:
        assert [m.id for m in client.models.list()] == [MODEL]
        assert client.models.retrieve(MODEL).owned_by == "llama"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("nope")
    with ant(gate) as client:
        assert [m.id for m in client.models.list()] == [MODEL]


def test_models_lists_only_what_can_be_served_and_unknown_ids_name_them(start_gate, llama_engine):
    # A second engine that never answers (port 9 of loopback: nothing listens there).
    down = "[[providers.engines]]\nname = 'down'\nkind = 'vllm'\n"
    down += "base_url = 'http://127.0.0.1:9'\nmodels = ['ghost']\n"
    gate = start_gate(engine_config(llama_engine, extra=down))
    with oai(gate) as client:
        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(openai.NotFoundError) as by_id:
            client.models.retrieve("nope")
        with pytest.raises(openai.NotFoundError) as by_chat:
            client.chat.completions.create(model="nope", messages=HI)
    assert by_id.value.message == by_chat.value.message
    assert f"available models: {MODEL}" in by_id.value.message


def test_chat_completion(gate):
    with oai(gate) as client:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=HI,
            max_tokens=5,
            temperature=0,
            extra_body={"logit_bias": NO_EOS},
        )
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens > 0


def test_stream_is_relayed_byte_for_byte(gate, llama_engine):
    """Through Gate and straight from the engine, the stream is the same (ids aside)."""
    body = {
        "model": MODEL,
        "messages": HI,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "logit_bias": NO_EOS,
    }
    via_gate = sse_lines(f"{gate.url}/v1/chat/completions", body)
    direct = sse_lines(f"{llama_engine.base_url}/chat/completions", body)

    def normalized(lines):
        out = []
        for line in lines:
            assert line.startswith("data: ")
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                out.append(data)
            else:
                chunk = json.loads(data)
                chunk.pop("id"), chunk.pop("created")
                out.append(chunk)
        return out

    assert via_gate[-1] == "data: [DONE]"
    assert normalized(via_gate) == normalized(direct)
    assert len(via_gate) == 6 + 3  # role chunk, 6 tokens, finish chunk, [DONE]


def test_stream_with_the_sdk_matches_the_plain_answer(gate):
    kwargs = {
        "model": MODEL,
        "messages": HI,
        "max_tokens": 6,
        "temperature": 0,
        "extra_body": {"logit_bias": NO_EOS},
    }
    with oai(gate) as client:
        plain = client.chat.completions.create(**kwargs).choices[0].message.content
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completions_and_embeddings(gate):
    with oai(gate) as client:
        completion = client.completions.create(
            model=MODEL, prompt="Once", max_tokens=3, extra_body={"logit_bias": NO_EOS}
        )
        embeddings = client.embeddings.create(model=MODEL, input=["a", "b c"])
    assert completion.choices[0].finish_reason == "length"
    assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 64


def test_forced_tool_call_passes_through(gate):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    with oai(gate) as client:
        reply = client.chat.completions.create(
            model=MODEL, messages=HI, tools=[WEATHER_TOOL], tool_choice=forced, max_tokens=64
        )
        stream = client.chat.completions.create(
            model=MODEL,
            messages=HI,
            tools=[WEATHER_TOOL],
            tool_choice=forced,
            max_tokens=64,
            stream=True,
        )
        fragments = [
            call.function.arguments or ""
            for chunk in stream
            for call in (chunk.choices[0].delta.tool_calls or [] if chunk.choices else [])
        ]
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo", "Lima")
    assert json.loads("".join(fragments))["city"] in ("Paris", "Oslo", "Lima")


# --- Anthropic dialect, translated for the OpenAI-only engine -------------------------


def test_anthropic_messages_with_system_and_turns(gate):
    with ant(gate) as client:
        message = client.messages.create(
            model=MODEL,
            max_tokens=4,
            system="Answer briefly.",
            extra_body={"temperature": 0},
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "and?"}]},
            ],
        )
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.content[0].type == "text"
    assert message.stop_reason in ("max_tokens", "end_turn")
    assert message.usage.input_tokens > 0 and 1 <= message.usage.output_tokens <= 4
    if message.stop_reason == "max_tokens":
        assert message.usage.output_tokens == 4


def test_anthropic_system_message_among_the_turns(gate):
    """Claude Code sends `role: "system"` at messages[1]; the Anthropic API takes it."""
    with ant(gate) as client:
        message = client.messages.create(
            model=MODEL,
            max_tokens=4,
            system="Answer briefly.",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "The user works in /tmp."},
                {"role": "assistant", "content": "hello"},
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}
                    ],
                },
                {"role": "user", "content": "and?"},
            ],
        )
    assert message.type == "message" and message.content[0].type == "text"
    assert 1 <= message.usage.output_tokens <= 4


def test_anthropic_stream_has_the_exact_event_grammar(gate):
    lines = sse_lines(
        f"{gate.url}/v1/messages",
        {"model": MODEL, "max_tokens": 5, "stream": True, "messages": HI},
        headers={"anthropic-version": "2023-06-01"},
    )
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert len(events) == len(datas)
    assert [d["type"] for d in datas] == events  # every data names its own event
    names = [e for e in events if e != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names[1] == "content_block_start" and names[-3] == "content_block_stop"
    assert set(names[2:-3]) == {"content_block_delta"}
    assert all(d["index"] == 0 for d in datas if "index" in d)
    with (
        ant(gate) as client,
        client.messages.stream(model=MODEL, max_tokens=5, messages=HI) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text
    assert final.stop_reason in ("max_tokens", "end_turn") and final.usage.output_tokens >= 1


def test_anthropic_tool_use_translated_both_ways(gate):
    with ant(gate) as client:
        message = client.messages.create(**FORCED_WEATHER)
        with client.messages.stream(**FORCED_WEATHER) as stream:
            streamed = stream.get_final_message()
        # ...and the tool result goes back in the next turn.
        use = next(b for b in message.content if b.type == "tool_use")
        follow_up = client.messages.create(
            model=MODEL,
            max_tokens=3,
            tools=[ANTHROPIC_WEATHER_TOOL],
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [use.model_dump()]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
                },
            ],
        )
    assert message.stop_reason == "tool_use"
    assert use.name == "get_weather" and use.input["city"] in ("Paris", "Oslo", "Lima")
    streamed_use = next(b for b in streamed.content if b.type == "tool_use")
    assert streamed_use.name == "get_weather"
    assert streamed_use.input["city"] in ("Paris", "Oslo", "Lima")
    assert follow_up.type == "message"


def test_anthropic_forced_tool_use_is_one_block_not_streamed(gate):
    """llama.cpp answers one call as both `tool_calls` and the legacy `function_call`."""
    with ant(gate) as client:
        message = client.messages.create(**FORCED_WEATHER)
    uses = [b for b in message.content if b.type == "tool_use"]
    assert len(uses) == 1, message.content
    assert message.stop_reason == "tool_use" and uses[0].name == "get_weather"


def test_max_completion_tokens_caps_a_llama_cpp_reply(gate):
    """langchain-openai sends `max_completion_tokens`, which llama.cpp ignores."""
    with oai(gate) as client:
        response = client.chat.completions.create(
            model=MODEL,
            messages=HI,
            max_completion_tokens=5,
            seed=0,  # uncapped, this seed writes 31 tokens before the stop (seed 4 only 5)
            temperature=0.8,
            stop=["~"],  # bounds the uncapped run: one printable byte in 95 at each token
            extra_body={"logit_bias": NO_EOS},
        )
    assert response.usage is not None and response.usage.completion_tokens == 5
    assert response.choices[0].finish_reason == "length"


# --- errors in the client's dialect --------------------------------------------------


def test_errors_are_in_the_clients_dialect(gate):
    base = gate.url
    bad_json = httpx.post(f"{base}/v1/chat/completions", content=b"{nope", timeout=10)
    assert bad_json.status_code == 400 and "message" in bad_json.json()["error"]
    no_model = httpx.post(f"{base}/v1/chat/completions", json={"messages": HI}, timeout=10)
    assert no_model.status_code == 400 and "model" in no_model.json()["error"]["message"]
    unknown = httpx.post(
        f"{base}/v1/chat/completions", json={"model": "gpt-9", "messages": HI}, timeout=10
    )
    assert unknown.status_code == 404
    assert MODEL in unknown.json()["error"]["message"]  # it lists what exists
    anthropic_unknown = httpx.post(
        f"{base}/v1/messages",
        json={"model": "claude-9", "max_tokens": 1, "messages": HI},
        timeout=10,
    )
    body = anthropic_unknown.json()
    assert anthropic_unknown.status_code == 404 and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and MODEL in body["error"]["message"]
    with ant(gate) as client, pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-9", max_tokens=1, messages=HI)


def test_body_too_large_is_413(start_gate, llama_engine):
    gate = start_gate(engine_config(llama_engine, extra="[server]\nmax_body_bytes = 2000\n"))
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = httpx.post(f"{gate.url}/v1/chat/completions", json=big, timeout=10)
    assert response.status_code == 413 and response.json()["error"]["type"]
    small = httpx.post(
        f"{gate.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "max_tokens": 1},
        timeout=30,
    )
    assert small.status_code == 200


def test_client_rate_limit_is_429_with_retry_after(start_gate, llama_engine):
    gate = start_gate(
        engine_config(
            llama_engine, extra="[server]\nclient_rate_per_minute = 6.0\nclient_burst = 2\n"
        )
    )
    body = {"model": MODEL, "messages": HI, "max_tokens": 1}
    statuses = [
        httpx.post(f"{gate.url}/v1/chat/completions", json=body, timeout=30) for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["retry-after"]) >= 1
    with oai(gate) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**body)


def test_api_keys_when_required(start_gate, llama_engine, gate_env):
    created = json.loads(run_gate("keys", "create", "ci", "--json", env=gate_env).stdout)
    gate = start_gate(engine_config(llama_engine, extra="[security]\nrequire_api_keys = true\n"))
    body = {"model": MODEL, "messages": HI, "max_tokens": 1}
    url = f"{gate.url}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    assert (
        httpx.post(
            url, json=body, headers={"authorization": "Bearer gk_wrong"}, timeout=10
        ).status_code
        == 401
    )
    with oai(gate, api_key=created["key"]) as client:
        assert client.chat.completions.create(**body).choices
    with ant(gate, api_key=created["key"]) as client:  # x-api-key
        assert client.messages.create(model=MODEL, max_tokens=1, messages=HI).content
    assert run_gate("keys", "revoke", created["id"], env=gate_env).returncode == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the daemon re-reads keys every few seconds
        status = httpx.post(
            url, json=body, headers={"x-api-key": created["key"]}, timeout=30
        ).status_code
        if status == 401:
            break
        time.sleep(0.5)
    assert status == 401


def test_binding_beyond_loopback_needs_api_keys(gate_env):
    result = run_gate("serve", "--bind", "0.0.0.0:0", env=gate_env)
    assert result.returncode == 2
    assert "require_api_keys" in result.stderr.decode()


# --- faults --------------------------------------------------------------------------


def test_engine_killed_mid_stream_ends_the_stream_with_an_error(start_gate, make_llama_engine):
    engine = make_llama_engine()
    gate = start_gate(engine_config(engine))
    # The framing tells the failure too: no terminating chunk after the error event.
    lines = cut_stream(f"{gate.url}/v1/chat/completions", LONG_STREAM, engine.kill)
    assert lines[-1] != "data: [DONE]"
    error = json.loads(lines[-1].removeprefix("data: "))
    assert "engine" in error["error"]["message"]
    # The SDK turns that into an exception, not a short success.
    gate.close()  # one daemon per data dir: the next one has it to itself
    engine2 = make_llama_engine()
    gate2 = start_gate(engine_config(engine2))
    with oai(gate2) as client, pytest.raises(openai.APIError):
        for i, _ in enumerate(
            client.chat.completions.create(
                model=MODEL,
                messages=HI,
                max_tokens=1900,
                stream=True,
                extra_body={"logit_bias": NO_EOS},
            )
        ):
            if i == 3:
                engine2.kill()


def test_engine_killed_mid_anthropic_stream_sends_an_error_event(
    start_gate, make_llama_engine, tmp_path
):
    from tests.engine.tiny_model import write_tiny_gguf

    # Anthropic's API has no logit_bias: a model that cannot stop keeps the stream going.
    engine = make_llama_engine(write_tiny_gguf(tmp_path / "endless.gguf", can_stop=False))
    gate = start_gate(engine_config(engine))
    with (
        ant(gate) as client,
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(model=MODEL, max_tokens=1900, messages=HI) as stream,
    ):
        for i, _ in enumerate(stream.text_stream):
            if i == 3:
                engine.kill()


def test_translated_anthropic_stream_reports_real_token_usage(
    start_gate, make_llama_engine, tmp_path
):
    """Claude Code tracks its context window with the stream's usage: message_start's
    input_tokens is the count count_tokens gives for the same request, and
    message_delta's output_tokens the tokens generated, not the chunks sent."""
    from tests.engine.tiny_model import write_tiny_gguf

    # Anthropic's API has no logit_bias: a model that cannot stop makes exactly max_tokens.
    engine = make_llama_engine(write_tiny_gguf(tmp_path / "endless.gguf", can_stop=False))
    gate = start_gate(engine_config(engine))
    request = {
        "model": MODEL,
        "system": "be brief",
        "messages": [{"role": "user", "content": "how many tokens is this?"}],
    }
    with ant(gate) as client:
        counted = client.messages.count_tokens(**request).input_tokens
        with client.messages.stream(max_tokens=64, **request) as stream:
            events = list(stream)
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "max_tokens"
    assert delta.usage.output_tokens == 64
    assert start.message.usage.input_tokens == counted > 0
    assert delta.usage.input_tokens == counted


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_stream_cut_by_the_shutdown_drain_ends_with_an_error_event(
    start_gate, make_llama_engine, tmp_path, dialect
):
    """SIGTERM, and a stream still running when the drain time runs out: the client gets
    a well-formed error event (what an SDK reports), then the connection is dropped
    without the terminating chunk, as for any stream that failed."""
    from tests.engine.tiny_model import write_tiny_gguf

    # A model that cannot stop and room for 60,000 tokens: the stream outlasts the drain.
    model = write_tiny_gguf(tmp_path / "endless.gguf", can_stop=False)
    engine = make_llama_engine(model, n_ctx=65536)
    gate = start_gate(engine_config(engine, extra="[server]\ndrain_timeout = 1.0\n"))
    if dialect == "openai":
        url, headers = f"{gate.url}/v1/chat/completions", {}
    else:
        url, headers = f"{gate.url}/v1/messages", {"anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "messages": HI, "max_tokens": 60000, "stream": True}
    lines = cut_stream(url, body, lambda: gate.signal(signal.SIGTERM), after=10, headers=headers)
    assert gate.wait() == 0
    error = json.loads(lines[-1].removeprefix("data: "))
    if dialect == "anthropic":
        assert lines[-2] == "event: error" and error["type"] == "error"
        message = error["error"]["message"]
    else:
        message = error["error"]["message"]
    assert "shutting down" in message


def test_a_client_that_stops_reading_does_not_keep_gate_from_stopping(
    start_gate, make_llama_engine, tmp_path
):
    """A stream whose client never reads fills the socket buffers and blocks Gate's send;
    at the end of the drain that send is ended too, and the process exits."""
    from tests.engine.tiny_model import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "endless.gguf", can_stop=False)
    engine = make_llama_engine(model, n_ctx=65536)
    gate = start_gate(engine_config(engine, extra="[server]\ndrain_timeout = 1.0\n"))
    port = int(gate.url.rsplit(":", 1)[1])
    body = json.dumps(
        {"model": MODEL, "messages": HI, "max_tokens": 60000, "stream": True}
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(5)  # never read: the buffers fill and Gate's send blocks
        gate.signal(signal.SIGTERM)
        assert gate.wait(timeout=15) == 0


def test_hanging_engine_times_out_with_504(start_gate, make_llama_engine):
    engine = make_llama_engine()
    gate = start_gate(engine_config(engine, extra="[server]\nresponse_timeout = 1.0\n"))
    engine.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = httpx.post(
            f"{gate.url}/v1/chat/completions",
            json={"model": MODEL, "messages": HI, "max_tokens": 1},
            timeout=30,
        )
        elapsed = time.monotonic() - started
    finally:
        engine.proc.send_signal(signal.SIGCONT)
    assert response.status_code == 504 and elapsed < 10
    assert response.json()["error"]["message"]


@contextlib.contextmanager
def scripted_engine(answer: bytes) -> Iterator[int]:
    """A socket that answers every request with `answer`; yields its port. No real engine
    answers garbage or cuts its body on purpose, so this stands in for one."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def scripted_config(port: int, model: str, kind: str = "openai_compatible") -> str:
    return (
        f"[[providers.engines]]\nname = 'scripted'\nkind = '{kind}'\n"
        f"base_url = 'http://127.0.0.1:{port}'\nmodels = ['{model}']\n"
    )


def test_engine_error_in_its_own_shape_reaches_the_client_in_its_dialect(
    start_gate, make_llama_engine
):
    """llama.cpp's server refuses a wrong key with `{"detail": "Invalid API key"}` (FastAPI's
    shape), which the openai SDK reads as an error without a body. Gate tells it in
    OpenAI's shape. (The engine's key is not in Gate's config; the model is named there,
    since the engine's listing is refused too.)"""
    engine = make_llama_engine(api_key="engine-secret")
    gate = start_gate(engine_config(engine, extra=f"models = ['{MODEL}']\n"))
    response = httpx.post(
        f"{gate.url}/v1/chat/completions", json={"model": MODEL, "messages": HI}, timeout=30
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["message"] == "engine llama: Invalid API key"
    assert error["type"] == "authentication_error"
    with (
        oai(gate) as client,
        pytest.raises(openai.AuthenticationError, match="engine llama: Invalid API key"),
    ):
        client.chat.completions.create(model=MODEL, messages=HI)


def _http_answer(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


# (engine kind, client path): pass-through both ways, and translated both ways.
_CLIENTS = [
    ("openai_compatible", "/v1/chat/completions"),
    ("anthropic", "/v1/messages"),
    ("openai_compatible", "/v1/messages"),
    ("anthropic", "/v1/chat/completions"),
]


@pytest.mark.parametrize(("kind", "path"), _CLIENTS)
def test_engine_error_as_plain_text_is_told_in_the_clients_dialect(start_gate, kind, path):
    answer = _http_answer(b"500 Internal Server Error", b"text/plain", b"oops")
    with scripted_engine(answer) as port:
        gate = start_gate(scripted_config(port, "oops", kind))
        body = {"model": "oops", "max_tokens": 5, "messages": HI}
        response = httpx.post(f"{gate.url}{path}", json=body, timeout=30)
    assert response.status_code == 500
    data = response.json()
    if path == "/v1/messages":
        assert data["type"] == "error" and data["error"]["type"] == "api_error"
    else:
        assert data["error"]["type"] == "server_error"
    assert data["error"]["message"] == "engine scripted: oops"


def test_engine_error_already_in_the_clients_dialect_passes_unchanged(start_gate):
    error = {"error": {"message": "slow down", "type": "tokens", "param": None, "code": "x"}}
    answer = _http_answer(b"429 Too Many Requests", b"application/json", json.dumps(error).encode())
    with scripted_engine(answer) as port:
        gate = start_gate(scripted_config(port, "busy"))
        body = {"model": "busy", "messages": HI}
        response = httpx.post(f"{gate.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 429 and response.json() == error


def test_engine_answering_garbage_is_502(start_gate):
    with scripted_engine(b"\x00\x01garbage that is not HTTP\r\n\r\n") as port:
        gate = start_gate(scripted_config(port, "junk"))
        response = httpx.post(
            f"{gate.url}/v1/chat/completions", json={"model": "junk", "messages": HI}, timeout=30
        )
    assert response.status_code == 502 and response.json()["error"]["message"]


def test_engine_cutting_a_plain_body_short_cuts_the_clients_body_quietly(start_gate):
    """The client must see a broken body (never a short one taken for whole), and Gate's
    deliberate abort is not an error of its own: no traceback in its log."""
    half = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n" + b'{"id": "x", ' + b" " * 100
    )
    with scripted_engine(half) as port:
        gate = start_gate(scripted_config(port, "half"))
        with pytest.raises(httpx.RemoteProtocolError):
            url = f"{gate.url}/v1/chat/completions"
            httpx.post(url, json={"model": "half", "messages": HI}, timeout=30)
        assert httpx.get(f"{gate.url}/health", timeout=5).status_code == 200
    stderr = gate.stderr()
    assert "Traceback" not in stderr and "Error in ASGI" not in stderr


def test_engine_down_then_back_is_used_again_without_restart(start_gate, make_llama_engine):
    engine = make_llama_engine()
    gate = start_gate(engine_config(engine))
    body = {"model": MODEL, "messages": HI, "max_tokens": 1}
    url = f"{gate.url}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 200
    engine.stop()
    down = httpx.post(url, json=body, timeout=30)
    assert down.status_code in (404, 503)  # unreachable, or already dropped by the check
    engine.restart()  # the same engine, back on the same port
    deadline = time.monotonic() + 15
    while (status := httpx.post(url, json=body, timeout=30).status_code) != 200:
        assert time.monotonic() < deadline, f"still {status}"
        time.sleep(0.3)


def test_client_disconnect_cancels_the_engine_request(gate):
    """The engine stops generating when the client goes away: the next request does not
    wait behind 1,900 tokens (~10 s on this engine, which serves one request at a time)."""
    assert hang_up_then_ask(f"{gate.url}/v1/chat/completions", LONG_STREAM) < 4
    metrics = httpx.get(f"{gate.url}/metrics", timeout=10).text
    in_flight = [
        line for line in metrics.splitlines() if line.startswith("gate_requests_in_flight{")
    ]
    assert in_flight and all(line.endswith(" 0") for line in in_flight)


def test_200_concurrent_streams_none_lost_or_mixed(gate):
    import trio

    results: dict[int, list[dict]] = {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"n{i}"}],
            "max_tokens": 1 + i % 5,
            "temperature": 0,
            "stream": True,
            "logit_bias": NO_EOS,
        }
        async with client.stream("POST", f"{gate.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            chunks = []
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line.removeprefix("data: ")))
                elif line == "data: [DONE]":
                    chunks.append({"done": True})
            results[i] = chunks

    async def main():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            with trio.fail_after(240):
                async with trio.open_nursery() as nursery:
                    for i in range(200):
                        nursery.start_soon(one, client, i)

    trio.run(main)
    assert len(results) == 200
    ids = set()
    for i, chunks in results.items():
        assert chunks[-1] == {"done": True}, f"stream {i} did not end with [DONE]"
        stream_ids = {c["id"] for c in chunks[:-1]}
        assert len(stream_ids) == 1, f"stream {i} mixes chunks of {stream_ids}"
        ids |= stream_ids
        tokens = [c for c in chunks[:-1] if c["choices"][0]["delta"].get("content") is not None]
        assert len(tokens) == 1 + i % 5, f"stream {i}: {len(tokens)} tokens"
    assert len(ids) == 200


# --- usage and metrics ---------------------------------------------------------------


def test_usage_is_recorded_and_metrics_exposed(start_gate, llama_engine, gate_env):
    gate = start_gate(engine_config(llama_engine, extra="[database]\nrequests_jsonl = true\n"))
    with oai(gate) as client:
        client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=3, extra_body={"logit_bias": NO_EOS}
        )
        list(
            client.chat.completions.create(
                model=MODEL,
                messages=HI,
                max_tokens=2,
                stream=True,
                extra_body={"logit_bias": NO_EOS},
            )
        )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=HI)
    with ant(gate) as client:
        client.messages.create(model=MODEL, max_tokens=2, messages=HI)
    metrics = httpx.get(f"{gate.url}/metrics", timeout=10).text
    gate.signal(signal.SIGTERM)
    assert gate.wait() == 0
    with sqlite3.connect(data_dir(gate_env) / "gate.db") as db:
        rows = db.execute(
            "SELECT endpoint, model, provider, status, tokens_in, tokens_out, ttft_ms, latency_ms"
            # A row is written when its request ends: a stream's end (after the client
            # has read [DONE]) can come after the next request's, so order by start.
            " FROM usage ORDER BY ts - latency_ms / 1000.0"
        ).fetchall()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("chat.completions", MODEL, "llama", 200),
        ("chat.completions", MODEL, "llama", 200),
        ("chat.completions", "nope", None, 404),
        ("messages", MODEL, "llama", 200),
    ]
    assert rows[0][4] > 0 and rows[0][5] == 3
    assert rows[1][5] == 2  # counted from the stream
    assert all(r[6] is not None and 0 < r[6] <= r[7] for r in (rows[0], rows[1], rows[3]))
    jsonl = (data_dir(gate_env) / "requests.jsonl").read_text().splitlines()
    lines = sorted(
        (json.loads(line) for line in jsonl), key=lambda r: r["ts"] - r["latency_ms"] / 1000
    )
    assert len(lines) == 4 and lines[2]["status"] == 404
    requests_line = (
        'gate_requests_total{provider="llama",model="tiny-llama",'
        'endpoint="chat.completions",status="200"} 2'
    )
    assert requests_line in metrics
    assert "gate_time_to_first_token_seconds_bucket" in metrics
    assert 'gate_tokens_total{provider="llama",model="tiny-llama",direction="out"}' in metrics


def test_streamed_requests_are_recorded_with_their_tokens(start_gate, llama_engine, gate_env):
    """llama-cpp-python reports no usage on a stream (it ignores include_usage): Gate
    counts the prompt with the engine's tokenizer and the reply's tokens itself; what the
    client receives is the engine's stream as it was (no usage chunk it did not ask for)."""
    gate = start_gate(engine_config(llama_engine))
    with oai(gate) as client:
        plain = client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=3, extra_body={"logit_bias": NO_EOS}
        )
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=HI,
                max_tokens=3,
                stream=True,
                extra_body={"temperature": 1.0, "seed": 7},
            )
        )
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk added
    with (
        ant(gate) as client,
        client.messages.stream(model=MODEL, max_tokens=3, messages=HI) as stream,
    ):
        message = stream.get_final_message()
    gate.signal(signal.SIGTERM)
    assert gate.wait() == 0
    with sqlite3.connect(data_dir(gate_env) / "gate.db") as db:
        rows = db.execute(
            "SELECT endpoint, status, tokens_in, tokens_out FROM usage ORDER BY id"
        ).fetchall()
        sources = [r[0] for r in db.execute("SELECT tokens_source FROM usage ORDER BY id")]
    assert sources == ["engine", "counted", "counted"]
    prompt = plain.usage.prompt_tokens
    assert rows[0] == ("chat.completions", 200, prompt, 3)
    # The stream's prompt counted by the tokenizer: the text, without the chat template.
    assert rows[1][:2] == ("chat.completions", 200)
    assert rows[1][2] is not None and 0 < rows[1][2] <= prompt and rows[1][3] == 3
    assert rows[2] == (
        "messages",
        200,
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert rows[2][2] > 0 and rows[2][3] == 3


def test_count_tokens_uses_the_engines_tokenizer(gate, llama_engine):
    request = {
        "model": MODEL,
        "system": "be brief",
        "messages": [{"role": "user", "content": "how many tokens is this?"}],
    }
    with ant(gate) as client:
        counted = client.messages.count_tokens(**request)
    raw = httpx.post(
        f"{gate.url}/v1/messages/count_tokens",
        json=request,
        timeout=10,
        headers={"anthropic-version": "2023-06-01"},
    )
    assert raw.headers["x-gate-token-count"] == "engine"
    direct = httpx.post(
        f"{llama_engine.root_url}/extras/tokenize/count",
        json={"input": "be brief\nhow many tokens is this?"},
        timeout=10,
    )
    assert counted.input_tokens == direct.json()["count"] > 0


def test_stream_chunks_arrive_as_the_engine_writes_them(gate):
    """No buffering: the first token reaches the client long before the last is made."""
    body = {"model": MODEL, "messages": HI, "max_tokens": 400, "stream": True, "logit_bias": NO_EOS}
    arrivals = []
    started = time.monotonic()
    with httpx.stream("POST", f"{gate.url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 400 + 3
    # ~400 tokens take a couple of seconds on this engine; the first comes at once.
    assert arrivals[1] < arrivals[-1] / 4


def test_a_long_prompt_gets_pings_before_its_first_token(start_gate, long_context_engine, gate_env):
    """An engine reading a long prompt says nothing until its first token (Claude Code
    gave up on such a stream after 378 s). With stream_keepalive set to 0.2 s through
    the environment, the raw stream shows Anthropic's ping events in that silence,
    before the first content_block_delta, and the message then completes. The prompt
    is long for the tiny model: one token per byte, so the engine reads it for seconds."""
    gate_env["GATE_SERVER__STREAM_KEEPALIVE"] = "0.2"
    gate = start_gate(engine_config(long_context_engine))
    prompt = "the quick brown fox jumps over the lazy dog " * 200  # ~8,800 tokens
    request = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": prompt}]}
    timed: list[tuple[float, str]] = []  # (seconds since the request, event name)
    with (
        ant(gate) as client,
        client.messages.with_streaming_response.create(stream=True, **request) as response,
    ):
        started = time.monotonic()
        for line in response.iter_lines():
            if line.startswith("event: "):
                timed.append((time.monotonic() - started, line.removeprefix("event: ")))
    names = [name for _, name in timed]
    first_delta = names.index("content_block_delta")
    pings = [t for t, name in timed[2:first_delta] if name == "ping"]  # after message_start's
    assert names[:2] == ["message_start", "ping"]
    assert len(pings) >= 2, timed[:first_delta]
    assert names[-2:] == ["message_delta", "message_stop"]
    # The silences the pings fill are no longer than the interval and some slack.
    ends = [*pings, timed[first_delta][0]]
    gaps = [b - a for a, b in zip([timed[1][0], *pings], ends, strict=True)]
    assert max(gaps) < 0.2 + 1.0, gaps


def test_a_stream_opens_while_its_engine_holds_even_its_head(start_gate, llama_engine, gate_env):
    """Ollama sends nothing, not even its response's head, until its first token, and the
    Anthropic SDKs (Claude Code) give up on a head that has not come in 10 minutes. Here
    the engine's answer is held 3 s (tests/e2e/head_delay.py); with stream_keepalive at
    0.5 s, the client's stream opens after 0.5 s, pings while it waits, and then carries
    the engine's answer, translated, as usual."""
    gate_env["GATE_SERVER__STREAM_KEEPALIVE"] = "0.5"
    with HeadDelayingProxy(llama_engine.root_url, delay=3.0) as proxy:
        gate = start_gate(engine_config(proxy))
        request = {"model": MODEL, "max_tokens": 4, "messages": HI}
        with ant(gate) as client:
            started = time.monotonic()
            with client.messages.with_streaming_response.create(stream=True, **request) as raw:
                head_after = time.monotonic() - started
                lines = list(raw.iter_lines())
            events = [line.removeprefix("event: ") for line in lines if line.startswith("event")]
            assert raw.status_code == 200 and head_after < 2.0, head_after
            first = events.index("message_start")
            assert first >= 2 and set(events[:first]) == {"ping"}, events
            assert events[-2:] == ["message_delta", "message_stop"]
            # The SDK's own stream reads it whole (the pings before message_start too).
            with client.messages.stream(**request) as stream:
                message = stream.get_final_message()
            assert message.stop_reason in ("max_tokens", "end_turn") and message.content


def test_an_engine_error_after_the_stream_opened_is_the_streams_error(
    start_gate, llama_engine, gate_env
):
    """The engine refuses (llama-cpp-python answers a `top_k` below 0 with a 500 and its
    validation error) only after the client's stream opened: the client gets Anthropic's
    error event with the engine's words, and the response is aborted, not completed."""
    gate_env["GATE_SERVER__STREAM_KEEPALIVE"] = "0.5"
    with HeadDelayingProxy(llama_engine.root_url, delay=3.0) as proxy:
        gate = start_gate(engine_config(proxy))
        request = {"model": MODEL, "max_tokens": 4, "messages": HI}
        with (
            ant(gate) as client,
            pytest.raises(anthropic.APIStatusError) as refused,
            client.messages.stream(**request, extra_body={"top_k": -1}) as stream,
        ):
            stream.get_final_message()
        assert "top_k" in str(refused.value), refused.value
        lines: list[str] = []
        with (
            httpx.stream(
                "POST", f"{gate.url}/v1/messages", json={**request, "top_k": -1, "stream": True}
            ) as r,
            pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
        ):
            for line in r.iter_lines():
                lines += [line] if line else []
        assert r.status_code == 200 and lines[-2] == "event: error", lines
        assert set(lines[:-2]) == {"event: ping", 'data: {"type":"ping"}'}, lines
        error = json.loads(lines[-1].removeprefix("data: "))["error"]
        assert error["type"] == "api_error" and "engine llama" in error["message"]
        assert "top_k" in error["message"]


def test_a_relayed_stream_opens_while_its_local_engine_holds_its_head(
    start_gate, llama_engine, gate_env
):
    """The same for an OpenAI client of a local engine, its stream relayed as it is: it
    opens after 0.5 s with SSE comments (which the SDKs skip) until the engine's own
    bytes come; an engine refusal after that is the stream's error, in OpenAI's shape."""
    gate_env["GATE_SERVER__STREAM_KEEPALIVE"] = "0.5"
    with HeadDelayingProxy(llama_engine.root_url, delay=3.0) as proxy:
        gate = start_gate(engine_config(proxy))
        request = {"model": MODEL, "messages": HI, "max_tokens": 4, "stream": True}
        with oai(gate) as client:
            started = time.monotonic()
            with client.chat.completions.with_streaming_response.create(**request) as raw:
                head_after = time.monotonic() - started
                lines = [line for line in raw.iter_lines() if line]
            assert raw.status_code == 200 and head_after < 2.0, head_after
            first = next(i for i, line in enumerate(lines) if line.startswith("data: "))
            assert first >= 2 and set(lines[:first]) == {": keepalive"}, lines
            assert lines[-1] == "data: [DONE]"
            chunks = list(client.chat.completions.create(**request))
            assert chunks[-1].choices[0].finish_reason in ("length", "stop")
            with pytest.raises(openai.APIError) as refused:
                list(client.chat.completions.create(**request, extra_body={"top_k": -1}))
        assert "top_k" in refused.value.message  # the engine's own words, in its own shape
