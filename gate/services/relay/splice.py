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
    last = trio.current_time()

    async def pump(src: trio.abc.Stream, dst: trio.abc.HalfCloseableStream, forward: bool) -> None:
        nonlocal last
        size = _MIN_READ
        while data := await src.receive_some(size):
            last = trio.current_time()
            size = min(size * 4, _MAX_READ) if len(data) >= size else _MIN_READ
            await dst.send_all(data)
            last = trio.current_time()
            if forward:
                result.a_to_b += len(data)
            else:
                result.b_to_a += len(data)
        await dst.send_eof()

    async def watch_idle(done: trio.CancelScope) -> None:
        while True:
            await trio.sleep_until(last + idle_timeout)
            if trio.current_time() >= last + idle_timeout:
                result.outcome = "idle"
                done.cancel()
                return

    failed = False
    async with trio.open_nursery() as nursery:
        directions = trio.CancelScope()

        async def run(src: trio.abc.Stream, dst: trio.abc.HalfCloseableStream, fwd: bool) -> None:
            nonlocal failed
            try:
                await pump(src, dst, fwd)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                failed = True
                nursery.cancel_scope.cancel()

        async def both() -> None:
            with directions:
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(run, a, b, True)
                    pumps.start_soon(run, b, a, False)
            nursery.cancel_scope.cancel()  # both ended: stop the idle watch

        nursery.start_soon(watch_idle, nursery.cancel_scope)
        nursery.start_soon(both)
    if failed:
        result.outcome = "reset"
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
