"""The HTTP service with real hypercorn and real sockets: readiness, routing, draining."""

import httpx
import pytest
import trio

from gate.nursery import Service, Supervisor
from gate.services.http import server
from gate.services.http.router import Router, send_json
from gate.services.http.server import build_app, serve_http


async def start(app, supervisor_holder, nursery, drain_timeout=5.0):
    async def run_http(ctx, *, task_status=trio.TASK_STATUS_IGNORED):
        await serve_http(
            ctx, app, bind="127.0.0.1:0", drain_timeout=drain_timeout, task_status=task_status
        )

    supervisor = Supervisor([Service("http", run_http)], drain_timeout=drain_timeout)
    supervisor_holder.append(supervisor)
    info = await nursery.start(supervisor.run)
    (url,) = info["http"]
    return url


async def test_health_answers_once_started():
    async with trio.open_nursery() as nursery:
        holder = []
        with trio.fail_after(10):
            url = await start(build_app(node_id="n" * 52), holder, nursery)
            # started() means listening: the very first request must succeed.
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{url}/health")
                missing = await client.get(f"{url}/v1/nothing")
                wrong_method = await client.post(f"{url}/health")
        holder[0].request_shutdown()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["node_id"] == "n" * 52 and body["version"]
    assert missing.status_code == 404
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"


def slow_app(entered: trio.Event, release: trio.Event, finished: list[str]):
    router = Router()

    @router.route("GET", "/slow")
    async def slow(scope, receive, send):
        entered.set()
        await release.wait()
        await send_json(send, 200, {"done": True})
        finished.append("slow")

    return router


async def test_shutdown_stops_accepting_and_drains_in_flight_requests():
    entered, release, finished = trio.Event(), trio.Event(), []
    results = {}
    async with trio.open_nursery() as nursery:
        holder = []
        with trio.fail_after(10):
            url = await start(slow_app(entered, release, finished), holder, nursery)
            host, port = url.removeprefix("http://").rsplit(":", 1)

            async def in_flight():
                async with httpx.AsyncClient() as client:
                    results["slow"] = await client.get(f"{url}/slow")

            nursery.start_soon(in_flight)
            await entered.wait()
            holder[0].request_shutdown()
            # Stopped accepting: a new connection is refused while the old one drains.
            with pytest.raises(OSError):
                for _ in range(50):
                    stream = await trio.open_tcp_stream(host, int(port))
                    await stream.aclose()
                    await trio.sleep(0.02)
            release.set()
    assert results["slow"].status_code == 200 and results["slow"].json() == {"done": True}
    assert finished == ["slow"]


async def test_requests_still_running_at_the_deadline_are_cancelled():
    entered, release, finished = trio.Event(), trio.Event(), []
    errors = []
    async with trio.open_nursery() as nursery:
        holder = []
        with trio.fail_after(10):
            url = await start(
                slow_app(entered, release, finished), holder, nursery, drain_timeout=0.3
            )

            async def in_flight():
                async with httpx.AsyncClient() as client:
                    try:
                        await client.get(f"{url}/slow")
                    except httpx.HTTPError as exc:
                        errors.append(exc)

            nursery.start_soon(in_flight)
            await entered.wait()
            started = trio.current_time()
            holder[0].request_shutdown()
    assert finished == []  # never released: the handler was cancelled at the deadline
    assert errors, "the client saw the connection end"
    assert trio.current_time() - started < 5


async def test_a_failure_inside_one_connection_stays_in_it(monkeypatch, caplog):
    """Whatever escapes one connection's code (here: a fault injected into its close)
    is logged and ends that connection only; the server goes on accepting."""

    async def broken_close(self):
        await self.stream.aclose()
        raise RuntimeError("injected fault")

    monkeypatch.setattr(server._Connection, "_close", broken_close)
    async with trio.open_nursery() as nursery:
        holder = []
        with trio.fail_after(10):
            url = await start(build_app(node_id="n" * 52), holder, nursery)
            statuses = []
            for _ in range(5):  # a new connection each time, each failing as it closes
                async with httpx.AsyncClient() as client:
                    statuses.append((await client.get(f"{url}/health")).status_code)
        holder[0].request_shutdown()
    assert statuses == [200] * 5
    failures = [r for r in caplog.records if r.getMessage() == "connection failed; closed"]
    assert len(failures) == 5 and "injected fault" in failures[0].error


@pytest.mark.parametrize("leaves", ["closes", "half-closes"])
async def test_a_connection_whose_client_left_ends_at_once(monkeypatch, leaves):
    """A client that closes its connection, or half-closes it (`nc -N`, a relay mirroring
    its client's end), while its request runs: the connection's task ends when the
    response does, not after hypercorn's keep-alive wait (75 s), which restarted as the
    response ended and held the task, and the half-closed client's wait for the end,
    until then."""
    ended: list[float] = []
    done = trio.Event()
    run = server._Connection.run

    async def observed_run(self):
        try:
            await run(self)
        finally:
            ended.append(trio.current_time())
            done.set()

    monkeypatch.setattr(server._Connection, "run", observed_run)
    entered, release, finished = trio.Event(), trio.Event(), []
    async with trio.open_nursery() as nursery:
        holder = []
        with trio.fail_after(10):
            url = await start(slow_app(entered, release, finished), holder, nursery)
            host, port = url.removeprefix("http://").rsplit(":", 1)
            client = await trio.open_tcp_stream(host, int(port))
            await client.send_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            await entered.wait()
            if leaves == "closes":
                await client.aclose()
            else:
                await client.send_eof()
            await trio.sleep(0.1)
            release.set()
            released = trio.current_time()
            with trio.move_on_after(5):
                await done.wait()
        holder[0].request_shutdown()
    assert finished == ["slow"]
    if not ended:
        await client.aclose()
    assert ended and ended[0] - released < 1, "the connection's task outlived its client"
    if leaves == "half-closes":  # the response came, then the end of the connection
        answer = b""
        with trio.fail_after(1):
            while chunk := await client.receive_some(65536):
                answer += chunk
        await client.aclose()
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"done":true}')
