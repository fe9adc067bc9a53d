"""Gate's API app in this process: the real Router, Gateway and hypercorn on loopback.

What `gate serve` runs, minus the store, the peers and the config watcher, so a test
can reach the gateway's parts (metrics, usage queue) and run its engine stand-ins in
the same trio run, every wait bounded by the test's own fail_after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import msgspec
import trio

from gate.config import ProviderConfig, ProvidersConfig, SecurityConfig, ServerConfig
from gate.nursery import ServiceContext
from gate.services.engines.client import UpstreamClient
from gate.services.engines.registry import ProviderRegistry
from gate.services.gateway.metrics import Metrics
from gate.services.gateway.pipeline import Gateway
from gate.services.http.server import build_app, serve_http
from gate.services.store.usage import UsageRecorder


@dataclass
class RunningGate:
    url: str
    gateway: Gateway
    metrics: Metrics
    usage: UsageRecorder


@asynccontextmanager
async def running_gate(
    engines: list[ProviderConfig], *, aliases: dict[str, str] | None = None
) -> AsyncIterator[RunningGate]:
    """Serve the API for `engines` (healthy, serving the models their config names)."""
    client = UpstreamClient()
    registry = ProviderRegistry(
        ProvidersConfig(engines=engines, aliases=aliases or {}, probe_local=False), client
    )
    for provider in registry.providers:
        provider.healthy = True
    metrics, usage = Metrics(), UsageRecorder()
    gateway = Gateway(
        registry=registry,
        client=client,
        metrics=metrics,
        usage=usage,
        api_keys=None,
        server=ServerConfig(),
        security=SecurityConfig(),
    )
    app = build_app(node_id="n" * 52, registry=registry)
    gateway.install(app)
    ctx = ServiceContext("http")
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(
            partial(serve_http, ctx, app, bind="127.0.0.1:0", drain_timeout=1.0)
        )
        try:
            yield RunningGate(url, gateway, metrics, usage)
        finally:
            ctx.shutdown.set()
    await client.aclose()  # once hypercorn has drained: requests release connections last


def engine(name: str, url: str, *models: str, kind: str = "llamacpp") -> ProviderConfig:
    return ProviderConfig(name=name, kind=kind, base_url=url, models=list(models))


# --- engine stand-ins -----------------------------------------------------------------

Handler = Callable[[str, dict[str, Any]], Awaitable[tuple[int, str, bytes]]]


async def serve_engine(nursery: trio.Nursery, handler: Handler) -> str:
    """A minimal HTTP/1.1 engine on loopback: `handler(path, json_body)` gives the status,
    content type and body of each answer. Returns its base URL."""

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            while request := await _read_request(stream):
                path, body = request
                status, content_type, payload = await handler(path, msgspec.json.decode(body))
                head = (
                    f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
                    f"content-length: {len(payload)}\r\n\r\n"
                )
                await stream.send_all(head.encode() + payload)

    listeners = await nursery.start(partial(trio.serve_tcp, connection, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def _read_request(stream: trio.SocketStream) -> tuple[str, bytes] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head.split(b" ")[1].decode(), body


CHAT_COMPLETION: Final = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
MESSAGE: Final = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "m",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


async def answering_engine(path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    """Answers chat completions, messages and count_tokens, each in its own dialect."""
    if path.endswith("/count_tokens"):
        return 200, "application/json", b'{"input_tokens": 3}'
    if path.endswith("/messages"):
        return 200, "application/json", msgspec.json.encode(MESSAGE)
    return 200, "application/json", msgspec.json.encode(CHAT_COMPLETION)
