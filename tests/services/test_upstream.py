"""The upstream client against real loopback sockets scripted to misbehave on purpose."""

import asyncio
import socket
import threading
from functools import partial

import pytest
import trio

from gate.config import ProviderConfig, ProvidersConfig
from gate.services.engines.client import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gate.services.engines.registry import ProviderRegistry

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def read_request(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + rest


async def serve(nursery, handler) -> tuple[str, list]:
    """Start a TCP server whose connections run `handler(stream, log)`; return its URL."""
    log: list = []
    listeners = await nursery.start(
        partial(trio.serve_tcp, partial(handler, log=log), 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}", log


async def keepalive_ok(stream, log):
    log.append("connection")
    while request := await read_request(stream):
        log.append(request)
        await stream.send_all(OK)


async def test_keep_alive_reuses_one_connection():
    async with trio.open_nursery() as nursery:
        url, log = await serve(nursery, keepalive_ok)
        client = UpstreamClient()
        with trio.fail_after(5):
            for _ in range(3):
                async with await client.request(
                    "POST", f"{url}/v1/x?y=1", headers=[(b"x-a", b"1")], body=b"hello"
                ) as response:
                    assert response.status == 200
                    assert await response.read() == b"{}"
        assert log.count("connection") == 1
        first = log[1]
        assert first.startswith(b"POST /v1/x?y=1 HTTP/1.1\r\n")
        assert b"content-length: 5" in first and b"x-a: 1" in first and first.endswith(b"hello")
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_connection_closed_by_server_is_retried_transparently():
    async def one_request_per_connection(stream, log):
        log.append("connection")
        if await read_request(stream):
            await stream.send_all(OK)  # keep-alive claimed, but then the server hangs up

    async with trio.open_nursery() as nursery:
        url, log = await serve(nursery, one_request_per_connection)
        client = UpstreamClient()
        with trio.fail_after(5):
            for _ in range(3):
                async with await client.request("GET", url) as response:
                    assert await response.read() == b"{}"
                await trio.sleep(0.05)  # let the server's close arrive
        assert log.count("connection") == 3
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_connect_refused_is_a_connect_error():
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(5), pytest.raises(UpstreamConnectError):
        await UpstreamClient().request("GET", f"http://127.0.0.1:{port}/")


async def test_hanging_engine_times_out_before_the_response():
    async def hang(stream, log):
        await read_request(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url, _ = await serve(nursery, hang)
        with trio.fail_after(5), pytest.raises(UpstreamTimeout, match="no response within"):
            await UpstreamClient().request("GET", url, response_timeout=0.2)
        nursery.cancel_scope.cancel()


async def test_stalled_body_times_out_per_chunk():
    async def stall(stream, log):
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url, _ = await serve(nursery, stall)
        chunks = []
        with trio.fail_after(5), pytest.raises(UpstreamTimeout, match="no data"):
            async with await UpstreamClient().request("GET", url, read_timeout=0.2) as response:
                async for chunk in response.aiter_body():
                    chunks.append(chunk)
        assert chunks == [b"abc"]
        nursery.cancel_scope.cancel()


async def test_garbage_is_a_protocol_error():
    async def garbage(stream, log):
        await read_request(stream)
        await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async with trio.open_nursery() as nursery:
        url, _ = await serve(nursery, garbage)
        with trio.fail_after(5), pytest.raises(UpstreamProtocolError):
            await UpstreamClient().request("GET", url)
        nursery.cancel_scope.cancel()


async def test_engine_dying_mid_body_is_a_disconnect_not_a_short_success():
    async def die(stream, log):
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        url, _ = await serve(nursery, die)
        with trio.fail_after(5), pytest.raises(UpstreamDisconnected):
            async with await UpstreamClient().request("GET", url) as response:
                await response.read()
        nursery.cancel_scope.cancel()


async def test_abandoned_body_closes_the_connection_so_the_engine_sees_it():
    closed = trio.Event()

    async def stream_forever(stream, log):
        await read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                await stream.send_all(b"5\r\ntoken\r\n")
                await trio.sleep(0.01)
        except trio.BrokenResourceError:
            closed.set()

    async with trio.open_nursery() as nursery:
        url, _ = await serve(nursery, stream_forever)
        client = UpstreamClient()
        with trio.fail_after(5):
            with trio.move_on_after(0.1):  # the client goes away mid-stream
                async with await client.request("GET", url) as response:
                    async for _ in response.aiter_body():
                        pass
            await closed.wait()
        assert client.statistics()["idle_connections"] == 0
        nursery.cancel_scope.cancel()


class UvicornEngine:
    """A real uvicorn server, as llama-cpp-python's and vLLM's OpenAI servers run, with its
    keep-alive timeout shortened from 5 s so that tests wait in seconds, not tens."""

    def __init__(self, keep_alive: float) -> None:
        uvicorn = pytest.importorskip("uvicorn")
        config = uvicorn.Config(
            self.app,
            timeout_keep_alive=keep_alive,  # type: ignore[arg-type]
            interface="asgi3",
            lifespan="off",
            ws="none",
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    async def app(self, scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(0.2)  # long enough for concurrent requests to overlap
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"data": [{"id": "m"}]}'})

    async def __aenter__(self):
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]})
        self.thread.start()
        while not self.server.started:  # noqa: ASYNC110 (set by uvicorn's thread)
            await trio.sleep(0.01)
        return self

    async def __aexit__(self, *exc_info):
        self.server.should_exit = True
        await trio.to_thread.run_sync(self.thread.join)
        self.socket.close()


async def test_after_the_engine_closed_every_idle_connection_the_retry_dials_fresh():
    """The issue's scenario: four concurrent requests leave four pooled connections, the
    engine closes them all while they are idle (uvicorn's keep-alive timeout, shorter
    here than the pool's own idle bound, so the pooled connections are still tried), and
    the next request and health check must not fail on them one after another."""
    async with UvicornEngine(keep_alive=0.5) as engine:
        client = UpstreamClient()
        registry = ProviderRegistry(
            ProvidersConfig(engines=[ProviderConfig(name="uv", kind="vllm", base_url=engine.url)]),
            client,
        )
        (provider,) = registry.providers

        async def ok() -> None:
            async with await client.request("POST", f"{engine.url}/v1/x", body=b"{}") as r:
                assert r.status == 200 and await r.read()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(ok)
            assert client.statistics()["idle_connections"] == 4
            await trio.sleep(1.0)  # past the engine's idle timeout
            await registry.check(provider)
            assert provider.healthy, provider.last_error
            await ok()
        await client.aclose()


async def test_connections_idle_past_the_bound_are_closed_not_reused():
    async with trio.open_nursery() as nursery:
        closed = trio.Event()

        async def keepalive_forever(stream, log):
            await keepalive_ok(stream, log)
            closed.set()  # the client closed its side

        url, log = await serve(nursery, keepalive_forever)
        client = UpstreamClient(idle_timeout=0.2)
        with trio.fail_after(5):
            async with await client.request("GET", url) as response:
                await response.read()
            await trio.sleep(0.3)
            async with await client.request("GET", url) as response:
                await response.read()
            await closed.wait()  # the expired connection was closed, not left open
        assert log.count("connection") == 2
        assert client.statistics()["idle_connections"] == 1
        await client.aclose()
        nursery.cancel_scope.cancel()


def test_the_default_idle_bound_is_below_uvicorns_keep_alive_timeout():
    assert UpstreamClient().idle_timeout < 5.0  # uvicorn's default, and vLLM's
