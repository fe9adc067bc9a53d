"""One case of a Python client library against a Gate, run as a user's program runs it:

    python tests/clients/python_cases.py CASE GATE_URL MODEL

LangChain's ChatOpenAI and ChatAnthropic and LiteLLM's SDK, each in a process of its own
(their imports set global state: LiteLLM's model map, LangChain's tracing), print what
they observed as one JSON line on stdout; tests/e2e/test_python_clients.py checks it.
A library error exits 1 with its traceback on stderr, so the test shows why.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

# Before either library is imported: LiteLLM would fetch its model cost map from GitHub
# at import, and LangChain could send traces to LangSmith. The tests talk to loopback only.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["LANGSMITH_TRACING"] = "false"

HI = [{"role": "user", "content": "hi"}]
# An enum, so that the grammar-constrained arguments of random weights end quickly.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
            "required": ["city"],
        },
    },
}
NO_EOS = {"2": -100}  # token 2 is </s> in the tiny model: the reply runs to its cap
CASES: dict[str, Callable[[str, str], Any]] = {}


def case(fn: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    CASES[fn.__name__] = fn
    return fn


def _sent_bodies() -> tuple[Any, list[dict[str, Any]]]:
    """An httpx client that keeps each JSON body it sends, to see what the library asked."""
    import httpx

    bodies: list[dict[str, Any]] = []

    def keep(request: httpx.Request) -> None:
        bodies.append(json.loads(request.content or b"{}"))

    return httpx.Client(event_hooks={"request": [keep]}), bodies


def _tool_calls(message: Any) -> list[dict[str, Any]]:
    return [{"name": call["name"], "args": call["args"]} for call in message.tool_calls]


@case
def langchain_openai(url: str, model: str) -> dict[str, Any]:
    from langchain_openai import ChatOpenAI

    http_client, sent = _sent_bodies()
    chat = ChatOpenAI(
        model=model,
        base_url=f"{url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        max_retries=0,
        max_tokens=5,  # langchain-openai sends it as max_completion_tokens
        temperature=0.8,
        seed=0,  # uncapped, this seed writes 31 tokens before the stop
        stop=["~"],
        extra_body={"logit_bias": NO_EOS},
        http_client=http_client,
    )
    reply = chat.invoke("hi")
    chunks = list(chat.stream("hi"))
    tools = ChatOpenAI(
        model=model,
        base_url=f"{url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        max_retries=0,
        max_tokens=64,
    ).bind_tools([WEATHER], tool_choice="get_weather")
    tool_reply = tools.invoke("Weather in Paris?")
    return {
        "sent_keys": sorted(sent[0]),
        "text": reply.content,
        "usage": reply.usage_metadata,
        "finish": reply.response_metadata.get("finish_reason"),
        "stream_chunks": len(chunks),
        "stream_text": "".join(str(chunk.content) for chunk in chunks),
        "tool_calls": _tool_calls(tool_reply),
    }


@case
def langchain_anthropic(url: str, model: str) -> dict[str, Any]:
    from langchain_anthropic import ChatAnthropic

    chat = ChatAnthropic(  # type: ignore[call-arg]
        model=model, base_url=url, api_key="unused", max_tokens=5, max_retries=0
    )
    reply = chat.invoke([("system", "be brief"), ("human", "hi")])
    chunks = list(chat.stream("hi"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    tools = ChatAnthropic(  # type: ignore[call-arg]
        model=model, base_url=url, api_key="unused", max_tokens=64, max_retries=0
    ).bind_tools([WEATHER], tool_choice="get_weather")
    tool_reply = tools.invoke("Weather in Paris?")
    return {
        "text": reply.content,
        "usage": reply.usage_metadata,
        "stop_reason": reply.response_metadata.get("stop_reason"),
        "stream_chunks": len(chunks),
        "stream_text": "".join(str(chunk.content) for chunk in chunks if chunk.content),
        "stream_usage": whole.usage_metadata,
        "tool_calls": _tool_calls(tool_reply),
    }


@case
def litellm_sdk(url: str, model: str) -> dict[str, Any]:
    import litellm

    seen: dict[str, Any] = {}
    for provider, base in (("openai", f"{url}/v1"), ("anthropic", url)):
        common = {"model": f"{provider}/{model}", "api_base": base, "api_key": "unused"}
        reply = litellm.completion(**common, messages=HI, max_tokens=5)
        stream = litellm.completion(**common, messages=HI, max_tokens=5, stream=True)
        chunks = [chunk for chunk in stream if chunk.choices]
        forced = litellm.completion(
            **common,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            max_tokens=64,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
        calls = forced.choices[0].message.tool_calls or []
        seen[provider] = {
            "text": reply.choices[0].message.content,
            "finish": reply.choices[0].finish_reason,
            "usage": reply.usage.model_dump(include={"prompt_tokens", "completion_tokens"}),
            "stream_chunks": len(chunks),
            "stream_finish": chunks[-1].choices[0].finish_reason,
            "tool_calls": [
                {"name": call.function.name, "args": json.loads(call.function.arguments)}
                for call in calls
            ],
        }
    embedded = litellm.embedding(
        model=f"openai/{model}", api_base=f"{url}/v1", api_key="unused", input=["a", "b"]
    )
    seen["embedding_dims"] = [len(item["embedding"]) for item in embedded.data]
    return seen


if __name__ == "__main__":
    name, gate_url, model_name = sys.argv[1:4]
    print(json.dumps(CASES[name](gate_url, model_name)))
