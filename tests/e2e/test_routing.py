"""Routing across engines: aliases, load, failover, limits, probing, and the OpenAI -> Anthropic
translation against a real Anthropic-dialect server (a second Gate in front of llama.cpp)."""

import json
import signal
import sqlite3

import anthropic
import httpx
import pytest
import trio

from .conftest import engine_config
from .gate_process import GateServe, data_dir
from .test_gateway import HI, MODEL, NO_EOS, WEATHER_TOOL, oai

pytestmark = pytest.mark.e2e


@pytest.fixture
def gate(start_gate, llama_engine):
    return start_gate(engine_config(llama_engine))


def two_engines_config(e1, e2, extra: str = "") -> str:
    return (
        "[providers]\nhealth_interval = 1.0\n"
        f"[[providers.engines]]\nname = 'one'\nkind = 'llamacpp'\nbase_url = '{e1.root_url}'\n"
        f"{extra}"
        f"[[providers.engines]]\nname = 'two'\nkind = 'llamacpp'\nbase_url = '{e2.root_url}'\n"
        f"{extra}"
    )


def long_stream(tokens: int = 1900) -> dict:
    """~2 s of generation on the tiny engine: long enough to overlap the next request."""
    return {
        "model": MODEL,
        "messages": HI,
        "max_tokens": tokens,
        "stream": True,
        "logit_bias": NO_EOS,
    }


async def stream_all(url: str, bodies: list[dict]) -> list[int]:
    statuses: list[int] = []

    async def one(client, body):
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            statuses.append(response.status_code)
            async for _ in response.aiter_bytes():
                pass

    async with httpx.AsyncClient(timeout=60) as client, trio.open_nursery() as nursery:
        for body in bodies:
            nursery.start_soon(one, client, body)
            await trio.sleep(0.1)  # in order, so each sees the load of the ones before
    return statuses


def providers_used(gate_env) -> list[str]:
    with sqlite3.connect(data_dir(gate_env) / "gate.db") as db:
        return [row[0] for row in db.execute("SELECT provider FROM usage ORDER BY id")]


def test_aliases_route_and_are_listed(start_gate, llama_engine):
    gate = start_gate(
        "[providers]\nhealth_interval = 1.0\naliases = { 'gpt-4o-mini' = 'tiny-llama' }\n"
        f"[[providers.engines]]\nname = 'llama'\nkind = 'llamacpp'\n"
        f"base_url = '{llama_engine.root_url}'\n"
    )
    with oai(gate) as client:
        assert sorted(m.id for m in client.models.list()) == ["gpt-4o-mini", MODEL]
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=2)
    assert reply.choices[0].message.content


def test_least_loaded_engine_takes_the_next_request(start_gate, make_llama_engine, gate_env):
    e1, e2 = make_llama_engine(), make_llama_engine()
    gate = start_gate(two_engines_config(e1, e2))
    statuses = trio.run(stream_all, gate.url, [long_stream(), long_stream()])
    assert statuses == [200, 200]
    gate.signal(signal.SIGTERM)
    gate.wait()
    assert sorted(providers_used(gate_env)) == ["one", "two"]


def test_per_engine_concurrency_limit(start_gate, make_llama_engine, gate_env):
    e1, e2 = make_llama_engine(), make_llama_engine()
    gate = start_gate(two_engines_config(e1, e2, extra="max_concurrency = 1\n"))
    statuses = trio.run(stream_all, gate.url, [long_stream()] * 3)
    assert sorted(statuses) == [200, 200, 429]


def test_global_in_flight_limit(start_gate, llama_engine):
    gate = start_gate(engine_config(llama_engine, extra="[server]\nmax_in_flight = 1\n"))
    statuses = trio.run(stream_all, gate.url, [long_stream(), long_stream()])
    assert statuses == [200, 429]


def test_failover_when_an_engine_cannot_be_reached(start_gate, make_llama_engine, gate_env):
    e1, e2 = make_llama_engine(), make_llama_engine()
    gate = start_gate(
        two_engines_config(e1, e2).replace("health_interval = 1.0", "health_interval = 3600.0")
    )
    e1.kill()  # Gate still believes it healthy: the first try fails to connect
    with oai(gate) as client:
        for _ in range(2):
            assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    gate.signal(signal.SIGTERM)
    gate.wait()
    assert providers_used(gate_env) == ["two", "two"]


def test_responses_endpoint_reaches_an_engine_without_it(gate):
    # llama.cpp's server has no /v1/responses: the request reaches it, its 404 makes Gate
    # ask again translated to chat completions, and the client gets a response.
    response = httpx.post(
        f"{gate.url}/v1/responses",
        json={"model": MODEL, "input": "hi", "max_output_tokens": 1},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["object"] == "response"


def test_local_engines_are_found_without_configuration(gate_env, make_llama_engine):
    engine = make_llama_engine()
    # No engines: probe where providers.probe_urls says (by default llama.cpp's port
    # 8080; here the engine this test owns, so that whatever runs on 8080 stays out).
    probe_urls = json.dumps({"llamacpp": engine.root_url})
    with GateServe({**gate_env, "GATE_PROVIDERS__PROBE_URLS": probe_urls}) as gate:
        with oai(gate) as client:
            assert [m.id for m in client.models.list()] == [MODEL]
            assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).choices
        health = httpx.get(f"{gate.url}/health", timeout=10).json()
    assert health["providers"]["llamacpp"]["healthy"] is True


def test_openai_client_against_an_anthropic_engine(start_gate, llama_engine, gate_env, tmp_path):
    """OpenAI's dialect in, Anthropic's out: Gate B serves /v1/messages for real (translated
    once more to llama.cpp), Gate A treats it as the Anthropic API."""
    env_b = {"XDG_CONFIG_HOME": str(tmp_path / "b-cfg"), "XDG_DATA_HOME": str(tmp_path / "b")}
    with GateServe(env_b, config=engine_config(llama_engine)) as gate_b:
        gate_a = start_gate(
            "[[providers.engines]]\nname = 'claude'\nkind = 'anthropic'\n"
            f"base_url = '{gate_b.url}'\napi_key = 'unused'\nmodels = ['{MODEL}']\n"
        )
        forced = {"type": "function", "function": {"name": "get_weather"}}
        with oai(gate_a) as client:
            reply = client.chat.completions.create(
                model=MODEL,
                max_tokens=4,
                messages=[{"role": "system", "content": "brief"}, *HI],
            )
            chunks = list(
                client.chat.completions.create(
                    model=MODEL,
                    max_tokens=4,
                    messages=HI,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            tool = client.chat.completions.create(
                model=MODEL, max_tokens=64, messages=HI, tools=[WEATHER_TOOL], tool_choice=forced
            )
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens >= 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    call = tool.choices[0].message.tool_calls[0]
    assert tool.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo", "Lima")


def test_anthropic_sdk_through_two_gates(start_gate, llama_engine, tmp_path):
    env_b = {"XDG_CONFIG_HOME": str(tmp_path / "b-cfg"), "XDG_DATA_HOME": str(tmp_path / "b")}
    with GateServe(env_b, config=engine_config(llama_engine)) as gate_b:
        gate_a = start_gate(
            "[[providers.engines]]\nname = 'claude'\nkind = 'anthropic'\n"
            f"base_url = '{gate_b.url}'\napi_key = 'unused'\nmodels = ['{MODEL}']\n"
        )
        with anthropic.Anthropic(base_url=gate_a.url, api_key="x", max_retries=0) as client:
            message = client.messages.create(model=MODEL, max_tokens=3, messages=HI)
            with client.messages.stream(model=MODEL, max_tokens=3, messages=HI) as stream:
                final = stream.get_final_message()
    assert message.type == "message" and message.content
    assert final.content and final.usage.output_tokens >= 1
