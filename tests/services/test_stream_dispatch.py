"""The stream table over real iroh connections: what one stream's failure may reach."""

from __future__ import annotations

import logging

import pytest
import trio

from gate.protocol import ErrorCode, StreamType, encode_preamble
from gate.services.p2p.dispatch import IncomingStream, Opener, Route, StreamDispatch
from gate.services.transport.quic import StreamReset

from .test_transport import connect_pair, endpoints  # noqa: F401  (a fixture)


async def test_a_handler_that_fails_resets_its_stream_and_nothing_else(endpoints, caplog):  # noqa: F811
    """A bug met by one stream (here a handler that raises) is logged with its traceback
    and resets that stream with INTERNAL; the connection and its other streams, and the
    task that accepts them (a node's or relay's service), go on."""
    client, server = endpoints

    async def handler(incoming: IncomingStream) -> None:
        data = incoming.trailing or await incoming.stream.receive_some(100)
        if data == b"boom":
            raise RuntimeError("a bug")
        await incoming.stream.send_all(b"ok:" + data)
        await incoming.stream.send_eof()

    dispatch = StreamDispatch(
        {StreamType.HTTP_PROXY: Route(Opener.ANY_NODE, handler)}, trusted=lambda _: False
    )
    with trio.fail_after(20):
        conn, accepted = await connect_pair(client, server)

        async def accept_streams() -> None:
            async with trio.open_nursery() as streams:
                while True:
                    stream = await accepted.accept_stream()
                    streams.start_soon(dispatch.serve, accepted, accepted.remote_id, stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_streams)
            failing = await conn.open_stream()
            await failing.send_all(encode_preamble(StreamType.HTTP_PROXY) + b"boom")
            with caplog.at_level(logging.ERROR, logger="gate"), pytest.raises(StreamReset) as reset:
                while await failing.receive_some(100):
                    pass
            assert reset.value.code == ErrorCode.INTERNAL
            for i in range(3):  # the same connection still serves
                fine = await conn.open_stream()
                await fine.send_all(encode_preamble(StreamType.HTTP_PROXY) + b"fine%d" % i)
                answer = b""
                while chunk := await fine.receive_some(100):
                    answer += chunk
                assert answer == b"ok:fine%d" % i
            nursery.cancel_scope.cancel()
    failed = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
