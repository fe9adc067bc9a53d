"""The real test engine, checked directly with the official openai SDK (no Gate involved).

These tests pin down what Gate's engine tests can rely on: llama.cpp's OpenAI-compatible
server (llama-cpp-python 0.3.x) on the tiny generated model. Some of them are
characterisations of the engine's own limits (marked "engine limit" below): Gate has to
translate or work around those, and a test that breaks here after an upgrade says so first.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

try:
    import openai
except ImportError:  # a checkout without the SDK: each test skips (fails under strict skips)
    openai = None  # type: ignore[assignment]

from tests.engine.fixtures import require_llama
from tests.engine.llama_server import EngineStartError, LlamaServer
from tests.engine.tiny_model import (
    BOS_ID,
    BYTE_BASE,
    EOS_ID,
    N_EMBD,
    N_VOCAB,
    NO_STOP_LOGIT_BIAS,
    write_tiny_gguf,
)

# The fixtures (llama_engine, make_llama_engine, tiny_model_path) come from the plugin
# tests.engine.fixtures, which tests/conftest.py loads.
pytestmark = pytest.mark.e2e

TIMEOUT = 30.0  # seconds, for every request: connect, each read, each write
MODEL = "tiny-llama"
PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")  # the bytes 0x20..0x7E

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "note": {"type": "string", "maxLength": 12},
        "days": {"type": "integer"},
        "alerts": {"type": "boolean"},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": WEATHER_SCHEMA,
    },
}
OTHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
FORCE_WEATHER: Any = {"type": "function", "function": {"name": "get_weather"}}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_weather_arguments(arguments: str) -> dict[str, Any]:
    """Parse tool-call arguments and check them against WEATHER_SCHEMA (no jsonschema dep)."""
    args = json.loads(arguments)
    assert isinstance(args, dict), arguments
    props = WEATHER_SCHEMA["properties"]
    assert set(WEATHER_SCHEMA["required"]) <= set(args), arguments
    assert set(args) <= set(props), arguments
    for key, value in args.items():
        spec = props[key]
        if spec["type"] == "string":
            assert isinstance(value, str), arguments
            if "enum" in spec:
                assert value in spec["enum"], arguments
            if "maxLength" in spec:
                assert len(value) <= spec["maxLength"], arguments
        elif spec["type"] == "integer":
            assert isinstance(value, int) and not isinstance(value, bool), arguments
        elif spec["type"] == "boolean":
            assert isinstance(value, bool), arguments
    return args


def client_for(engine: LlamaServer, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("api_key", "unused")
    return openai.OpenAI(base_url=engine.base_url, timeout=TIMEOUT, max_retries=0, **kwargs)


@pytest.fixture(autouse=True)
def _needs_openai_sdk() -> None:
    if openai is None:
        pytest.skip("the openai SDK is not installed (pip install openai)")


@pytest.fixture
def client(llama_engine: LlamaServer):
    with client_for(llama_engine) as c:
        yield c


@pytest.fixture
def http(llama_engine: LlamaServer):
    with httpx.Client(base_url=llama_engine.root_url, timeout=TIMEOUT) as c:
        yield c


# -- the model file ------------------------------------------------------------------------


def test_model_file_is_small_deterministic_and_complete(tmp_path: Path, tiny_model_path: Path):
    import gguf

    again = write_tiny_gguf(tmp_path / "again.gguf")
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert again.read_bytes() == tiny_model_path.read_bytes()
    assert other.read_bytes() != tiny_model_path.read_bytes()
    assert tiny_model_path.stat().st_size < 1_000_000

    reader = gguf.GGUFReader(tiny_model_path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name for t in reader.tensors}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2
    assert fields["llama.embedding_length"] == N_EMBD
    assert fields["llama.attention.head_count"] == 4
    assert fields["tokenizer.ggml.model"] == "llama"
    assert "<|im_start|>" in fields["tokenizer.chat_template"]
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens) == N_VOCAB
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[BYTE_BASE + 0x41] == "<0x41>"
    assert fields["tokenizer.ggml.token_type"][BYTE_BASE:] == [gguf.TokenType.BYTE] * 256
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for i in range(2):
        for part in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ):
            expected.add(f"blk.{i}.{part}.weight")
    assert tensors == expected


# -- OpenAI endpoints ----------------------------------------------------------------------


def test_models_lists_the_alias(client: openai.OpenAI):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_chat_completion(client: openai.OpenAI):
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=16, seed=1, temperature=0.8
    )
    assert response.object == "chat.completion"
    assert response.model == MODEL
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content  # the model never ends before its first token
    assert set(choice.message.content) <= PRINTABLE
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens > len("What is the weather in Paris?")  # bytes + template
    assert 1 <= usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 16


def test_chat_runs_to_max_tokens_when_full_stop_is_banned(client: openai.OpenAI):
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=40, seed=3, logit_bias=NO_STOP_LOGIT_BIAS
    )
    (choice,) = response.choices
    assert choice.finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 40
    # One printable ASCII character per token.
    assert choice.message.content is not None and len(choice.message.content) == 40
    assert set(choice.message.content) <= PRINTABLE


def test_chat_ends_by_itself(client: openai.OpenAI):
    """Without a max_tokens cap in reach, the model stops with `</s>`, right after a "."."""
    finishes = []
    for seed in range(5):
        response = client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=1024, seed=seed
        )
        (choice,) = response.choices
        finishes.append(choice.finish_reason)
        if choice.finish_reason == "stop":
            assert choice.message.content is not None
            assert choice.message.content.endswith(".")
    assert finishes.count("stop") >= 4, finishes


def test_same_seed_same_answer_streamed_or_not(client: openai.OpenAI):
    """A seed makes answers reproducible: a test may compare Gate's answer to the engine's."""
    request: Any = dict(model=MODEL, messages=ASK, max_tokens=24, seed=11, temperature=0.8)
    first = client.chat.completions.create(**request).choices[0].message.content
    second = client.chat.completions.create(**request).choices[0].message.content
    with client.chat.completions.create(**request, stream=True) as stream:
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert first
    assert first == second == streamed


def test_chat_completion_stream(client: openai.OpenAI):
    with client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=12,
        seed=5,
        logit_bias=NO_STOP_LOGIT_BIAS,
        stream=True,
    ) as stream:
        chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(content) == 12 and all(text and len(text) == 1 for text in content)
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert not chunks[-1].choices[0].delta.content


def test_stream_carries_no_usage_even_when_asked(client: openai.OpenAI):
    """Engine limit: no `stream_options` support, so a stream never reports usage."""
    with client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=4,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason is not None
    assert all(c.usage is None for c in chunks)


def test_max_completion_tokens_is_ignored(client: openai.OpenAI):
    """Engine limit: only `max_tokens` caps a reply; Gate must translate the newer name."""
    response = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_completion_tokens=3,
        seed=4,
        logit_bias=NO_STOP_LOGIT_BIAS,
        temperature=0.8,
        stop=["~"],  # bounds the run: one printable byte in 95 at each token
    )
    assert response.usage is not None
    assert response.usage.completion_tokens > 3


def test_completions(client: openai.OpenAI):
    response = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, seed=2, logit_bias=NO_STOP_LOGIT_BIAS
    )
    (choice,) = response.choices
    assert choice.finish_reason == "length"
    assert len(choice.text) == 8 and set(choice.text) <= PRINTABLE
    assert response.usage is not None
    assert response.usage.prompt_tokens == 1 + len("Once upon a time") + 3 * 2  # BOS, ▁ = 3 B
    assert response.usage.completion_tokens == 8

    with client.completions.create(
        model=MODEL, prompt="Once", max_tokens=5, seed=2, stream=True
    ) as stream:
        chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].text for c in chunks)


# -- tools -------------------------------------------------------------------------------


def test_forced_tool_call(client: openai.OpenAI):
    for seed in range(3):
        response = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[OTHER_TOOL, WEATHER_TOOL],
            tool_choice=FORCE_WEATHER,
            max_tokens=512,  # the grammar ends the call long before (~40 tokens)
            seed=seed,
        )
        (choice,) = response.choices
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        (call,) = choice.message.tool_calls
        assert call.type == "function"
        assert call.id
        assert call.function.name == "get_weather"
        check_weather_arguments(call.function.arguments)


def test_forced_tool_call_streamed(client: openai.OpenAI):
    with client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice=FORCE_WEATHER,
        max_tokens=512,
        seed=7,
        stream=True,
    ) as stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert len(deltas) > 2  # the arguments arrive in pieces
    assert all(len(d) == 1 and d[0].index == 0 for d in deltas)
    first = deltas[0][0]
    assert first.id and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    arguments = "".join((d[0].function and d[0].function.arguments) or "" for d in deltas)
    check_weather_arguments(arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_tool_choice_auto_is_answered_in_text_by_default(client: openai.OpenAI):
    """Engine limit: the model's own chat template only honours a *named* tool_choice.

    "auto" and "required" are accepted and ignored: the reply is text, never a tool call.
    """
    for tool_choice in ("auto", "required"):
        response = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER_TOOL],
            tool_choice=tool_choice,
            max_tokens=16,
            seed=1,
        )
        (choice,) = response.choices
        assert choice.message.tool_calls is None
        assert choice.message.content
        assert choice.finish_reason in ("stop", "length")


def test_chatml_function_calling_format(make_llama_engine):
    """`--chat_format chatml-function-calling`: forced calls as before, plus "auto" unstreamed.

    Engine limits: "required" is a 500 (an AssertionError in the handler). "auto" streamed
    is a 200 with an empty, properly terminated event stream (the server logs "Automatic
    streaming tool choice is not supported"), after which the server drops the keep-alive
    connection, so the client's next request on it fails; the engine itself carries on.
    """
    engine = make_llama_engine(chat_format="chatml-function-calling", embedding=False)
    with client_for(engine) as client:
        forced = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice=FORCE_WEATHER, seed=1
        )
        (call,) = forced.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"
        check_weather_arguments(call.function.arguments)

        auto = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="auto", seed=1
        )
        (choice,) = auto.choices
        if choice.message.tool_calls:  # the grammar lets the model pick; both are valid
            assert choice.finish_reason == "tool_calls"
            (call,) = choice.message.tool_calls
            assert call.function.name == "get_weather"
            check_weather_arguments(call.function.arguments)
        else:
            assert choice.message.content is not None

        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required"
            )

    with (
        client_for(engine) as client,
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="auto", stream=True
        ) as stream,
    ):
        assert list(stream) == []

    with client_for(engine) as client:
        assert [m.id for m in client.models.list()] == [MODEL]


# -- embeddings, tokenizer, missing endpoints --------------------------------------------


def test_embeddings(client: openai.OpenAI):
    response = client.embeddings.create(model=MODEL, input=["hello", "world", "hello"])
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2]
    assert all(len(v) == N_EMBD and all(isinstance(x, float) for x in v) for v in vectors)
    # The same text embeds the same (up to float noise: its place in the batch differs).
    assert max(abs(a - b) for a, b in zip(vectors[0], vectors[2], strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(vectors[0], vectors[1], strict=True)) > 0.1
    assert response.usage.prompt_tokens == 3 * (1 + 5)  # BOS + one token per byte


def test_chat_is_unchanged_by_an_embeddings_call(client: openai.OpenAI):
    """Embedding mode and chat share one llama context; an embedding must not disturb chat."""
    request: Any = dict(model=MODEL, messages=ASK, max_tokens=16, seed=9, temperature=0.8)
    before = client.chat.completions.create(**request).choices[0].message.content
    client.embeddings.create(model=MODEL, input="What is the weather in Paris?")
    after = client.chat.completions.create(**request).choices[0].message.content
    assert before == after


def test_tokenize_endpoints(http: httpx.Client):
    """/extras/tokenize[/count] (not under /v1): a way to count tokens for Anthropic's API."""
    text = "Hi there"
    tokens = http.post("/extras/tokenize", json={"model": MODEL, "input": text}).json()["tokens"]
    assert tokens[0] == BOS_ID
    # One token per byte; the SentencePiece tokenizer escapes " " as U+2581 (3 bytes).
    escaped = text.replace(" ", "\u2581").encode()
    assert tokens[1:] == [BYTE_BASE + b for b in escaped]
    count = http.post("/extras/tokenize/count", json={"model": MODEL, "input": text}).json()
    assert count == {"count": len(tokens)}
    detok = http.post("/extras/detokenize", json={"model": MODEL, "tokens": tokens[1:3]})
    assert detok.json() == {"text": "Hi"}
    assert EOS_ID not in tokens


def test_request_shapes_the_engine_rejects_or_bends(http: httpx.Client):
    """Engine limits that Gate's translations must respect (llama-cpp-python's request model):

    * a request that fails validation is a 500 (not a 400/422) listing pydantic's errors;
    * an assistant turn with tool_calls must omit `content` or make it a string: `null` is
      rejected (500);
    * only user messages may carry content parts; system/assistant/tool content must be a
      string (500 otherwise);
    * a prompt beyond n_ctx is a 400 with code `context_length_exceeded`;
    * an unknown model name is served by the one loaded model and echoed back.
    """
    user: Any = {"role": "user", "content": "hi"}
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tool_turn: Any = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}

    def post(messages: list[Any], model: str = MODEL) -> httpx.Response:
        body = {"model": model, "max_tokens": 2, "messages": messages}
        return http.post("/v1/chat/completions", json=body)

    for content in ({}, {"content": ""}):
        assistant = {"role": "assistant", "tool_calls": [call], **content}
        assert post([user, assistant, tool_turn]).status_code == 200, content
    rejected = post([user, {"role": "assistant", "content": None, "tool_calls": [call]}, tool_turn])
    assert rejected.status_code == 500
    assert "validation error" in rejected.json()["error"]["message"]

    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": " there"}]
    assert post([{"role": "user", "content": parts}]).status_code == 200
    assert post([{"role": "system", "content": parts}, user]).status_code == 500

    too_long = post([{"role": "user", "content": "x" * 2100}])
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"

    other = post([user], model="no-such-model")
    assert other.status_code == 200 and other.json()["model"] == "no-such-model"


def test_no_anthropic_messages_endpoint(http: httpx.Client):
    response = http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 404


# -- concurrency, faults, options --------------------------------------------------------


async def test_concurrent_streams_queue_and_both_finish(llama_engine: LlamaServer):
    """One request at a time inside the engine: a second stream waits instead of cutting the
    first one short (llama_cpp.server's default `interrupt_requests` would end the first
    stream early with a bare `[DONE]` and no finish_reason; LlamaServer turns it off).

    Also shows the sync fixtures and the openai SDK in a trio test. The streams use the sync
    client in worker threads: openai's AsyncStream leaves async generators unclosed after
    `[DONE]`, which trio reports as ResourceWarnings (errors under filterwarnings=error).
    A non-streamed AsyncOpenAI call is fine under trio.
    """
    async with openai.AsyncOpenAI(
        base_url=llama_engine.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0
    ) as async_client:
        assert [m.id async for m in async_client.models.list()] == [MODEL]

    def run(name: str, max_tokens: int) -> tuple[int, str | None]:
        with (
            client_for(llama_engine) as client,
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": name}],
                max_tokens=max_tokens,
                seed=1,
                logit_bias=NO_STOP_LOGIT_BIAS,
                stream=True,
            ) as stream,
        ):
            chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        return len(text), chunks[-1].choices[0].finish_reason

    results: dict[str, tuple[int, str | None]] = {}

    async def run_in_thread(name: str, max_tokens: int) -> None:
        results[name] = await trio.to_thread.run_sync(run, name, max_tokens)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_in_thread, "long", 300)
            await trio.sleep(0.05)
            nursery.start_soon(run_in_thread, "short", 10)
    assert results == {"long": (300, "length"), "short": (10, "length")}


def test_engine_killed_mid_stream(make_llama_engine):
    """SIGKILL while streaming: the SDK raises APIConnectionError, caused by httpx's
    RemoteProtocolError "peer closed connection without sending complete message body
    (incomplete chunked read)"; later requests fail to connect."""
    engine = make_llama_engine()
    received = 0
    with client_for(engine) as client:
        with (
            pytest.raises(openai.APIConnectionError) as excinfo,
            client.chat.completions.create(
                model=MODEL,
                messages=ASK,
                max_tokens=1500,
                seed=1,
                logit_bias=NO_STOP_LOGIT_BIAS,
                stream=True,
            ) as stream,
        ):
            for _chunk in stream:
                received += 1
                if received == 5:
                    assert engine.kill() == -9
        assert received < 100
        # openai 3.x speaks through httpx2 (a fork of httpx): match the error by name.
        cause = excinfo.value.__cause__
        assert type(cause).__name__ == "RemoteProtocolError", repr(cause)
        assert "incomplete chunked read" in str(cause)
        assert not engine.running

        with pytest.raises(openai.APIConnectionError) as excinfo:
            client.models.list()
        assert type(excinfo.value.__cause__).__name__ == "ConnectError"


def test_restart_on_the_same_port(make_llama_engine):
    engine = make_llama_engine(embedding=False)
    port = engine.port
    with client_for(engine) as client:
        assert [m.id for m in client.models.list()] == [MODEL]
        engine.stop()
        with pytest.raises(openai.APIConnectionError):
            client.models.list()
        engine.restart()
        assert engine.port == port and engine.running
        assert [m.id for m in client.models.list()] == [MODEL]
    # Without a log_dir the engine logs into its own temp dir, which stop() removes.
    own = LlamaServer(engine.model_path, embedding=False).start()
    try:
        own_dir = own.log_path.parent
        own.kill()
        assert "Uvicorn running" in own.log_tail(200)
        own.restart()
        assert own.running
    finally:
        own.stop()
    assert not own_dir.exists()


def test_api_key_option(make_llama_engine):
    engine = make_llama_engine(api_key="engine-secret", embedding=False)
    with client_for(engine, api_key="wrong") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    with client_for(engine, api_key="engine-secret") as client:
        assert [m.id for m in client.models.list()] == [MODEL]


def test_start_failure_reports_the_log(tmp_path: Path):
    require_llama()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    server = LlamaServer(broken, log_dir=tmp_path, start_timeout=60)
    with pytest.raises(EngineStartError, match="exited with") as excinfo:
        server.start()
    assert "llama_cpp.server" in str(excinfo.value)
    assert not server.running
    server.stop()
