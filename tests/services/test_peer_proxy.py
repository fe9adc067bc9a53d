"""One HTTP exchange over an HttpProxy stream, both ends, over in-memory streams."""

from contextlib import aclosing

import pytest
import trio
import trio.testing

from gate.protocol import (
    HTTP_PROXY,
    NEED_DATA,
    Body,
    Channel,
    End,
    ErrorCode,
    PreambleReader,
    RequestHead,
    ResponseHead,
    Role,
    StreamError,
    StreamType,
    encode_preamble,
)
from gate.services.engines.client import UpstreamDisconnected, UpstreamTimeout
from gate.services.http.router import Router, send_json
from gate.services.p2p.http_over_stream import request_over_stream, serve_http_stream


async def responder(stream, app, peer="peer-a"):
    reader = PreambleReader()
    while (preamble := reader.receive_data(await stream.receive_some(65536))) is NEED_DATA:
        pass
    assert preamble.stream_type is StreamType.HTTP_PROXY
    await serve_http_stream(stream, app, peer=peer, trailing=reader.trailing_data)


async def ask(stream, body=b"{}", target="/echo"):
    return await request_over_stream(
        stream,
        method="POST",
        target=target,
        headers=[(b"content-type", b"application/json"), (b"x-a", b"1"), (b"x-a", b"2")],
        body=body,
        peer="peer-b",
        response_timeout=5,
        read_timeout=5,
    )


def echo_app(seen):
    router = Router()

    @router.route("POST", "/echo")
    async def echo(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.update(scope=scope, body=body)
        await send_json(send, 201, {"size": len(body)}, [(b"x-answer", b"yes")])

    return router


async def test_round_trip_with_headers_and_the_callers_identity():
    seen = {}
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, b, echo_app(seen))
        with trio.fail_after(5):
            async with await ask(a, body=b"x" * 3_000_000, target="/echo?q=1") as response:
                body = await response.read()
    assert response.status == 201 and body == b'{"size":3000000}'
    assert response.header(b"x-answer") == b"yes"
    scope = seen["scope"]
    assert scope["path"] == "/echo" and scope["query_string"] == b"q=1"
    assert scope["extensions"]["gate.peer"] == "peer-a"
    assert [v for k, v in scope["headers"] if k == b"x-a"] == [b"1", b"2"]
    assert seen["body"] == b"x" * 3_000_000


def streaming_app(release: trio.Event, state: dict):
    router = Router()

    @router.route("POST", "/echo")
    async def stream(scope, receive, send):
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        try:
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await release.wait()
            await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            state["finished"] = True
        except trio.Cancelled:
            state["cancelled"] = True
            if "on_cancel" in state:
                state.pop("on_cancel").set()
            raise

    return router


async def test_chunks_arrive_before_the_response_ends():
    release, state = trio.Event(), {}
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, b, streaming_app(release, state))
        with trio.fail_after(5):
            async with await ask(a) as response, aclosing(response.aiter_body()) as body:
                chunks = []
                async for chunk in body:
                    chunks.append(chunk)
                    release.set()  # only now may the app send the rest
    assert chunks == [b"data: 1\n\n", b"data: 2\n\n"] and state == {"finished": True}


async def test_requester_abandoning_the_response_cancels_the_app():
    on_cancel = trio.Event()
    release, state = trio.Event(), {"on_cancel": on_cancel}
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, b, streaming_app(release, state))
        with trio.fail_after(5):
            async with await ask(a) as response, aclosing(response.aiter_body()) as body:
                async for _ in body:
                    break  # the client went away after the first chunk
            await on_cancel.wait()
    assert state == {"cancelled": True}


async def test_responder_dying_mid_stream_is_a_disconnect():
    a, b = trio.testing.memory_stream_pair()

    async def die_after_first_chunk():
        reader = PreambleReader()
        reader.receive_data(await b.receive_some(65536))
        channel = Channel(HTTP_PROXY, Role.RESPONDER)
        channel.receive_data(reader.trailing_data)
        while channel.next_event() is not NEED_DATA:
            pass
        await b.send_all(channel.send(ResponseHead(status=200)) + channel.send(Body(data=b"a")))
        await b.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(die_after_first_chunk)
        with trio.fail_after(5), pytest.raises(UpstreamDisconnected):
            async with await ask(a) as response, aclosing(response.aiter_body()) as body:
                async for chunk in body:
                    assert chunk == b"a"


async def test_a_peer_silent_mid_response_times_out_after_the_idle_limit(autojump_clock):
    """The read timeout is per wait for data: a chunk that keeps coming keeps the
    response alive; silence past the limit is UpstreamTimeout."""
    release, state = trio.Event(), {}
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, b, streaming_app(release, state))
        response = await request_over_stream(
            a,
            method="POST",
            target="/echo",
            headers=[],
            body=b"{}",
            peer="peer-b",
            response_timeout=5,
            read_timeout=30,
        )
        async with response, aclosing(response.aiter_body()) as body:
            assert await body.__anext__() == b"data: 1\n\n"
            began = trio.current_time()
            with pytest.raises(UpstreamTimeout, match="no data for 30s"):
                await body.__anext__()  # the app waits for `release`, which never comes
            assert trio.current_time() - began == pytest.approx(30)
        nursery.cancel_scope.cancel()


def requester_channel():
    channel = Channel(HTTP_PROXY, Role.INITIATOR)
    return channel, encode_preamble(StreamType.HTTP_PROXY)


def recording_app(received: list):
    router = Router()

    @router.route("POST", "/echo")
    async def record(scope, receive, send):
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if message["type"] == "http.request":
            await send_json(send, 200, {"body": b"".join(m["body"] for m in received).decode()})

    return router


async def test_a_body_whose_first_part_came_with_the_head_is_whole_and_in_order():
    """Frames already buffered with the head are handed over first; the rest follows as
    it arrives (the two ways a body reaches the app, in one request)."""
    received: list = []
    channel, preamble = requester_channel()
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder, b, recording_app(received))
        head = RequestHead(method="POST", target="/echo", headers=[])
        await a.send_all(preamble + channel.send(head) + channel.send(Body(data=b"ab")))
        await trio.testing.wait_all_tasks_blocked()
        await a.send_all(channel.send(Body(data=b"cd")) + channel.send(End()))
        with trio.fail_after(5):
            while not isinstance(event := channel.next_event(), ResponseHead):
                assert event is NEED_DATA
                channel.receive_data(await a.receive_some(65536))
        assert event.status == 200
        nursery.cancel_scope.cancel()
    assert [m["body"] for m in received] == [b"ab", b"cd", b""]
    assert [m["more_body"] for m in received] == [True, True, False]


async def test_a_request_cancelled_in_its_first_read_never_reaches_the_engine():
    """Head and StreamError in one read: the app sees http.disconnect, serves nothing."""
    received: list = []
    channel, preamble = requester_channel()
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(responder, b, recording_app(received))
            head = RequestHead(method="POST", target="/echo", headers=[])
            cancel = StreamError(code=ErrorCode.CANCELLED, message="requester cancelled")
            await a.send_all(preamble + channel.send(head) + channel.send(cancel))
            assert await a.receive_some(65536) == b""  # closed, nothing sent back
    assert received == [{"type": "http.disconnect"}]
