"""Engine discovery and health per kind.

Ollama and the cloud APIs cannot run here (no Ollama build, no network), so scripted
loopback servers answer their model-listing calls with the documented bodies; the
llama.cpp kind is covered by the e2e tests against the real engine.
"""

from functools import partial

import msgspec
import trio

from gate.config import ProviderConfig, ProvidersConfig
from gate.services.engines.client import UpstreamClient
from gate.services.engines.registry import Dialect, Provider, ProviderRegistry, discover_engines


async def serve_json(nursery, routes: dict[str, tuple[int, object]], seen: list) -> str:
    """A loopback HTTP server answering GET paths with fixed JSON; records request heads."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head = data.split(b"\r\n\r\n")[0].decode()
        seen.append(head)
        path = head.split(" ")[1]
        status, body = routes.get(path, (404, {"error": "no"}))
        payload = msgspec.json.encode(body)
        await stream.send_all(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
            + payload
        )
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_each_kind_lists_its_models_with_its_own_auth():
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        ollama = await serve_json(
            nursery,
            {"/api/tags": (200, {"models": [{"name": "llama3.2:1b"}, {"name": "qwen"}]})},
            seen,
        )
        claude = await serve_json(
            nursery,
            {
                "/v1/models": (
                    200,
                    {"data": [{"type": "model", "id": "claude-x"}], "has_more": False},
                )
            },
            seen,
        )
        cloud = await serve_json(nursery, {"/v1/models": (200, {"data": [{"id": "gpt-x"}]})}, seen)
        config = ProvidersConfig(
            engines=[
                ProviderConfig(name="o", kind="ollama", base_url=ollama),
                ProviderConfig(name="a", kind="anthropic", base_url=claude, api_key="sk-ant"),
                ProviderConfig(name="c", kind="openai", base_url=cloud + "/v1", api_key_env="K"),
            ]
        )
        registry = ProviderRegistry(config, UpstreamClient(), env={"K": "sk-openai"})
        with trio.fail_after(10):
            await registry.check_all()
        nursery.cancel_scope.cancel()
    o, a, c = registry.providers
    assert o.models == {"llama3.2:1b", "qwen"} and o.healthy and o.dialect is Dialect.OPENAI
    assert a.models == {"claude-x"} and a.dialect is Dialect.ANTHROPIC
    assert c.models == {"gpt-x"} and c.base_url == cloud  # a trailing /v1 is tolerated
    heads = "\n".join(seen).lower()
    assert "x-api-key: sk-ant" in heads and "anthropic-version: 2023-06-01" in heads
    assert "authorization: bearer sk-openai" in heads
    assert registry.serving("qwen") == [o]


async def test_engine_that_goes_down_and_comes_back():
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        url = await serve_json(nursery, {"/v1/models": (200, {"data": [{"id": "m"}]})}, seen)
        provider = Provider(name="e", kind="vllm", base_url=url, configured_models=("extra",))
        registry = ProviderRegistry(ProvidersConfig(), UpstreamClient())
        registry.providers.append(provider)
        with trio.fail_after(10):
            await registry.check(provider)
            assert provider.healthy and provider.models == {"m", "extra"}
            nursery.cancel_scope.cancel()
    with trio.fail_after(10):
        await registry.check(provider)  # the server is gone now
    assert not provider.healthy and provider.last_error
    assert provider.models == {"m", "extra"}  # kept, so the router can still try it
    assert registry.serving("m") == [provider]


async def test_an_error_status_is_unhealthy():
    async with trio.open_nursery() as nursery:
        url = await serve_json(nursery, {"/v1/models": (401, {"error": "bad key"})}, [])
        provider = Provider(name="c", kind="openai", base_url=url)
        registry = ProviderRegistry(ProvidersConfig(), UpstreamClient())
        with trio.fail_after(10):
            await registry.check(provider)
        nursery.cancel_scope.cancel()
    assert not provider.healthy and "401" in (provider.last_error or "")


async def test_probing_looks_where_probe_urls_says_and_names_engines_by_kind():
    async with trio.open_nursery() as nursery:
        ollama = await serve_json(
            nursery, {"/api/tags": (200, {"models": [{"name": "llama3.2:1b"}]})}, []
        )
        vllm = await serve_json(nursery, {"/v1/models": (200, {"data": [{"id": "qwen"}]})}, [])
        # The llama.cpp address is an engine of another kind: it does not answer as one.
        probe_urls = {"ollama": ollama, "vllm": vllm + "/v1", "llamacpp": ollama}
        registry = ProviderRegistry(ProvidersConfig(probe_urls=probe_urls), UpstreamClient())
        with trio.fail_after(10):
            found = await registry.probe_local()
            discovered = await discover_engines(UpstreamClient(), probe_urls)
        nursery.cancel_scope.cancel()
    assert [(p.name, p.kind, p.base_url) for p in found] == [
        ("ollama", "ollama", ollama),
        ("vllm", "vllm", vllm),
    ]
    assert registry.providers == found and registry.serving("qwen") == [found[1]]
    assert [(p.kind, p.healthy) for p in discovered] == [
        ("ollama", True),
        ("vllm", True),
        ("llamacpp", False),
    ]


async def test_probing_nowhere_finds_nothing():
    registry = ProviderRegistry(ProvidersConfig(probe_urls={}), UpstreamClient())
    with trio.fail_after(10):
        assert await registry.probe_local() == []
        assert await discover_engines(UpstreamClient(), {}) == []


async def test_only_engines_that_answer_have_their_models_listed():
    async with trio.open_nursery() as nursery:
        up = await serve_json(nursery, {"/v1/models": (200, {"data": [{"id": "up"}]})}, [])
        config = ProvidersConfig(
            engines=[
                ProviderConfig(name="up", kind="vllm", base_url=up),
                # Nothing listens on port 9 of loopback (discard): down, with its model named.
                ProviderConfig(
                    name="down", kind="vllm", base_url="http://127.0.0.1:9", models=["named"]
                ),
            ],
            aliases={"a-up": "up", "a-down": "named"},
        )
        registry = ProviderRegistry(config, UpstreamClient())
        with trio.fail_after(10):
            await registry.check_all()
        nursery.cancel_scope.cancel()
    assert registry.model_ids() == {"up": ["up"], "a-up": ["up"]}


def test_a_missing_key_is_said_once_and_configured_engines_end_discovery(caplog):
    caplog.set_level("INFO", logger="gate.providers")
    claude = ProviderConfig(name="claude", kind="anthropic", api_key_env="NO_SUCH_KEY_VAR")
    registry = ProviderRegistry(ProvidersConfig(), UpstreamClient(), env={})
    assert registry.probing and not caplog.records
    registry.reconfigure(ProvidersConfig(engines=[claude]))
    registry.reconfigure(ProvidersConfig(engines=[claude], health_interval=5.0))  # kept
    lines = [(r.levelname, r.getMessage(), getattr(r, "variable", None)) for r in caplog.records]
    assert lines == [
        ("WARNING", "provider has no API key: its variable is not set", "NO_SUCH_KEY_VAR"),
        (
            "INFO",
            "engines are configured; local engines are no longer looked for"
            " (providers.probe_local applies only without [[providers.engines]])",
            None,
        ),
    ]


async def test_looking_for_engines_again_logs_nothing_new(caplog):
    """The web UI's Setup page looks at every visit: that is no news for the log."""
    caplog.set_level("DEBUG", logger="gate.providers")
    async with trio.open_nursery() as nursery:
        vllm = await serve_json(nursery, {"/v1/models": (200, {"data": [{"id": "q"}]})}, [])
        with trio.fail_after(10):
            for _ in range(3):
                (found,) = await discover_engines(UpstreamClient(), {"vllm": vllm})
                assert found.healthy
        nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if r.levelno >= 20] == []
