"""Bytes both ways between two streams (a browser's TCP connection and a node's iroh
stream), until both directions have ended.

- Backpressure: a direction reads its next chunk only once the last one was sent, so a
  slow reader holds back its writer; nothing is buffered beyond one chunk each way.
- Half-close mirrored (spec §7.4): the end of one side's input is passed on as
  `send_eof` to the other, and the other direction keeps going.
- A reset (a direction that fails) aborts both sides: a TCP client gets a RST, the
  iroh stream a reset, so neither end takes a cut stream for a complete one.
- Idle timeout: no byte in either direction for `idle_timeout` seconds ends both; a
  stream that keeps moving is never cut, however long it runs.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass

import trio

__all__ = ["SpliceResult", "abort", "splice"]

# Reads start small and grow while they come back full: a stream moving a large answer
# then crosses in few large reads (a read from iroh costs per call as well as per byte),
# while a quiet connection's pending read stays small (iroh sets aside the whole size
# for a read in progress).
_MIN_READ = 16 * 1024
_MAX_READ = 256 * 1024


@dataclass
class SpliceResult:
    a_to_b: int = 0  # bytes
    b_to_a: int = 0
    outcome: str = "closed"  # closed | idle | reset


async def splice(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    *,
    idle_timeout: float,
) -> SpliceResult:
    result = SpliceResult()
    failed = False
    # The idle timeout is the deadline of one cancel scope around both directions, moved
    # on by every byte: no watcher task, and one task per direction, the calling task
    # being one of them (a relay splices every connection: each task costs).
    with trio.CancelScope(deadline=trio.current_time() + idle_timeout) as idle:

        async def pump(
            src: trio.abc.Stream, dst: trio.abc.HalfCloseableStream, forward: bool
        ) -> None:
            size = _MIN_READ
            while data := await src.receive_some(size):
                idle.deadline = trio.current_time() + idle_timeout
                size = min(size * 4, _MAX_READ) if len(data) >= size else _MIN_READ
                await dst.send_all(data)
                idle.deadline = trio.current_time() + idle_timeout
                if forward:
                    result.a_to_b += len(data)
                else:
                    result.b_to_a += len(data)
            await dst.send_eof()

        async with trio.open_nursery() as nursery:

            async def run(
                src: trio.abc.Stream, dst: trio.abc.HalfCloseableStream, fwd: bool
            ) -> None:
                nonlocal failed
                try:
                    await pump(src, dst, fwd)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    failed = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(run, a, b, True)
            await run(b, a, False)
    if failed:
        result.outcome = "reset"
    elif idle.cancelled_caught:
        result.outcome = "idle"
    if result.outcome == "closed":
        for stream in (a, b):
            with contextlib.suppress(Exception):
                await stream.aclose()
    else:
        await abort(a)
        await abort(b)
    return result


async def abort(stream: trio.abc.AsyncResource) -> None:
    """Close abruptly: a TCP socket with a RST (SO_LINGER 0), an iroh stream with a
    reset; anything else closed."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset = getattr(stream, "reset", None)
    with contextlib.suppress(Exception):
        if reset is not None:
            await reset()
        else:
            await stream.aclose()
    await trio.aclose_forcefully(stream)
