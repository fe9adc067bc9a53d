"""One iroh stream's floor: bytes from one Python process to another over a single QUIC
stream on loopback, with and without Gate's code, side by side in one run.

    .venv/bin/python bench/iroh_stream.py [--megabytes 64] [--rounds 3]

Two ways to drive the same iroh binding (iroh on PyPI, the uniffi bindings Gate uses):
- `asyncio`: the binding as shipped, on an asyncio loop, no Gate code at all: the floor
  any Python program using it gets;
- `gate`: Gate's transport (gate.services.transport.quic's QuicStream on the trio bridge
  of gate.services.transport.iroh_trio), as the relay and the node use it;
and, for scale, `tcp`: the same bytes over a loopback TCP socket from trio.

For each write size (16 KiB, 64 KiB, 256 KiB, 1 MiB) the writer sends --megabytes MB in
writes of that size and the reader reads with reads of that size until the end. Printed:
MB/s (reader's first byte to its end), and CPU ms per MB of each process (its own
user+system time over the transfer, all threads: iroh's Rust runtime included). The ways
take turns, round after round, so the machine's drift hits them alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.turns import turn_order

SIZES = (16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024)
ALPN = b"gate-bench/1"
TIMEOUT = 120.0  # seconds for one transfer, writer and reader alike
# An exchange: what a relay and a node do for each browser connection, as bare streams:
# open a stream, send a ClientHello's worth, get a server's first flight back.
HELLO = 2_000
HELLO_BYTES = bytes(HELLO)
REPLY = bytes(3_000)
PAUSE = 0.002  # between exchanges, as between the benchmark's handshakes


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def report(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


# -- asyncio: the binding as shipped ------------------------------------------------------


def asyncio_side(role: str, total: int, size: int, peer: str, speedups: bool = False) -> None:
    import asyncio

    import iroh
    from iroh import iroh_ffi

    if speedups:
        from gate.services.transport import iroh_speedups

        iroh_speedups.apply()

    class Preset(iroh.Preset):
        def apply(self, builder) -> None:  # type: ignore[no-untyped-def]
            builder.apply_minimal()
            builder.bind_addr("127.0.0.1:0")

    async def bind():  # type: ignore[no-untyped-def]
        options = iroh.EndpointOptions(
            preset=Preset(),
            secret_key=iroh.SecretKey.generate().to_bytes(),
            alpns=[ALPN],
            relay_mode=iroh.RelayMode.disabled(),
        )
        return await iroh.Endpoint.bind(options)

    async def main() -> None:
        iroh_ffi.uniffi_set_event_loop(asyncio.get_running_loop())
        endpoint = await bind()
        if role == "reader":
            addr = endpoint.addr()
            report(peer=f"{addr.id()}@{addr.direct_addresses()[0]}")
            incoming = await endpoint.accept_next()
            conn = await (await incoming.accept()).connect()
            if not size:  # exchanges: answer each stream, until the opener closes
                tasks = set()

                async def answer(bi) -> None:  # type: ignore[no-untyped-def]
                    await bi.recv().read_exact(HELLO)
                    await bi.send().write_all(REPLY)
                    await bi.send().finish()

                while True:
                    try:
                        bi = await conn.accept_bi()
                    except iroh.IrohError:
                        break
                    task = asyncio.create_task(answer(bi))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await endpoint.close()
                return
            bi = await conn.accept_bi()
            recv = bi.recv()
            first = await recv.read(size)
            began_cpu, began = cpu(), time.perf_counter()
            got = len(first)
            while data := await recv.read(size):
                got += len(data)
            report(seconds=time.perf_counter() - began, cpu=cpu() - began_cpu, bytes=got)
            await bi.send().write_all(b"k")
            await bi.send().finish()
            await asyncio.sleep(0.2)
        else:
            node, _, addr = peer.partition("@")
            target = iroh.EndpointAddr(iroh.EndpointId.from_string(node), None, [addr])
            conn = await endpoint.connect(target, ALPN)
            if not size:
                times = []
                for _ in range(total):
                    began = time.perf_counter()
                    bi = await conn.open_bi()
                    await bi.send().write_all(HELLO_BYTES)
                    await bi.recv().read_exact(len(REPLY))
                    times.append(time.perf_counter() - began)
                    await bi.send().finish()
                    await asyncio.sleep(PAUSE)
                report(times=times)
                conn.close(0, b"done")
                await endpoint.close()
                return
            bi = await conn.open_bi()
            send = bi.send()
            chunk = os.urandom(size)
            began_cpu = cpu()
            for _ in range(total // size):
                await send.write_all(chunk)
            await send.finish()
            report(cpu=cpu() - began_cpu)
            await bi.recv().read(1)
        await endpoint.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


# -- gate: Gate's transport on trio ---------------------------------------------------------


def gate_side(role: str, total: int, size: int, peer: str) -> None:
    import trio

    from gate.protocol import NodeId
    from gate.services.transport.quic import bind_endpoint

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            await transfer()

    async def transfer() -> None:
        endpoint = await bind_endpoint(os.urandom(32), host="127.0.0.1", alpns=[ALPN])
        if role == "reader":
            report(peer=f"{endpoint.node_id}@{endpoint.direct_addresses[0]}")
            conn = await (await endpoint.accept()).accept()
            if not size:  # exchanges: answer each stream, until the opener closes
                async with trio.open_nursery() as nursery:
                    while True:
                        try:
                            stream = await conn.accept_stream()
                        except trio.BrokenResourceError:
                            break
                        nursery.start_soon(answer, stream, stream.send_eof)
                await endpoint.aclose()
                return
            stream = await conn.accept_stream()
            await read_transfer(stream, size)
            await stream.send_eof()
            await trio.sleep(0.2)
        else:
            node, _, addr = peer.partition("@")
            conn = await endpoint.connect(NodeId.parse(node), [addr], alpn=ALPN)
            if not size:
                await exchanges(conn.open_stream, total)
                conn.close(0, "done")
                await endpoint.aclose()
                return
            await write_transfer(await conn.open_stream(), total, size)
        await endpoint.aclose()

    trio.run(main)


# -- tcp: loopback TCP from trio, for scale -----------------------------------------------


def tcp_side(role: str, total: int, size: int, peer: str) -> None:
    import trio

    async def main() -> None:
        with trio.fail_after(TIMEOUT):
            if role == "reader":
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                port = listeners[0].socket.getsockname()[1]
                report(peer=f"tcp@127.0.0.1:{port}")
                if not size:  # exchanges: a new connection each (what nginx opens)
                    for _ in range(total):
                        stream = await listeners[0].accept()
                        await answer(stream, stream.aclose)
                    return
                stream = await listeners[0].accept()
                await read_transfer(stream, size)
                await stream.aclose()
            else:
                port = int(peer.rpartition(":")[2])
                if not size:
                    await exchanges(
                        functools.partial(trio.open_tcp_stream, "127.0.0.1", port), total
                    )
                    return
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await write_transfer(stream, total, size)
                await stream.aclose()

    trio.run(main)


# -- what the gate and tcp ways do alike, on trio's stream interface ----------------------


async def read_transfer(stream, size: int) -> None:  # type: ignore[no-untyped-def]
    """The reader's half of a transfer: timed from its first bytes to the writer's end,
    reported, then acknowledged (the writer's CPU figure waits for it)."""
    first = await stream.receive_some(size)
    began_cpu, began = cpu(), time.perf_counter()
    got = len(first)
    while data := await stream.receive_some(size):
        got += len(data)
    report(seconds=time.perf_counter() - began, cpu=cpu() - began_cpu, bytes=got)
    await stream.send_all(b"k")


async def write_transfer(stream, total: int, size: int) -> None:  # type: ignore[no-untyped-def]
    """The writer's half: `total` bytes in writes of `size`, its CPU reported, then the
    reader's acknowledgement awaited."""
    chunk = os.urandom(size)
    began_cpu = cpu()
    for _ in range(total // size):
        await stream.send_all(chunk)
    await stream.send_eof()
    report(cpu=cpu() - began_cpu)
    await stream.receive_some(1)


async def exchanges(open_stream, total: int) -> None:  # type: ignore[no-untyped-def]
    """`total` exchanges, each on a stream `open_stream()` opens; their times reported."""
    import trio

    times = []
    for _ in range(total):
        began = time.perf_counter()
        stream = await open_stream()
        await stream.send_all(HELLO_BYTES)
        await receive_exactly(stream, len(REPLY))
        times.append(time.perf_counter() - began)
        await stream.aclose()
        await trio.sleep(PAUSE)
    report(times=times)


async def answer(stream, end) -> None:  # type: ignore[no-untyped-def]
    """The other side of an exchange; `end()` then ends the stream (or connection)."""
    await receive_exactly(stream, HELLO)
    await stream.send_all(REPLY)
    await end()


async def receive_exactly(stream, count: int) -> bytes:  # type: ignore[no-untyped-def]
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some(count - len(data))
        if not chunk:
            raise EOFError(f"ended after {len(data)} of {count} bytes")
        data += chunk
    return data


SIDES = {
    "asyncio": asyncio_side,
    "asyncio+speedups": functools.partial(asyncio_side, speedups=True),
    "gate": gate_side,
    "tcp": tcp_side,
}


def run_pair(way: str, total: int, size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reader's and the writer's reports of one run of `way`."""
    here = str(Path(__file__).resolve())
    cmd = [sys.executable, here, "--side", way, "--total", str(total), "--size", str(size)]
    cwd = Path(here).parents[1]
    reader = subprocess.Popen(
        [*cmd, "--role", "reader"], stdout=subprocess.PIPE, text=True, cwd=cwd
    )
    writer = None
    try:
        assert reader.stdout is not None
        peer = json.loads(reader.stdout.readline())["peer"]
        writer = subprocess.Popen(
            [*cmd, "--role", "writer", "--peer", peer], stdout=subprocess.PIPE, text=True, cwd=cwd
        )
        out, _ = writer.communicate(timeout=TIMEOUT)
        wrote = json.loads(out.splitlines()[-1])
        line = reader.stdout.readline()
        read = json.loads(line) if line else {}
        reader.wait(timeout=TIMEOUT)
    finally:
        for proc in (reader, writer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    return read, wrote


def one_transfer(way: str, total: int, size: int) -> dict[str, float]:
    read, wrote = run_pair(way, total, size)
    mb = read["bytes"] / 1e6
    return {
        "mbps": mb / read["seconds"],
        "reader_ms_per_mb": read["cpu"] * 1000 / mb,
        "writer_ms_per_mb": wrote["cpu"] * 1000 / mb,
    }


def spread(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    med = statistics.median(values)
    if len(values) == 1 or round(low, digits) == round(high, digits):
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exchanges", type=int, default=300, help="per way and round")
    parser.add_argument("--ways", default="asyncio,asyncio+speedups,gate,tcp")
    parser.add_argument("--side", choices=list(SIDES))
    parser.add_argument("--role", choices=["reader", "writer"])
    parser.add_argument("--total", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--peer", default="")
    args = parser.parse_args()
    if args.side:
        SIDES[args.side](args.role, args.total, args.size, args.peer)
        return
    ways = args.ways.split(",")
    total = args.megabytes * 1_000_000
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    exchanges: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        order = turn_order(ways, round_)
        for way in order:
            times = run_pair(way, args.exchanges, 0)[1]["times"][10:]  # after a warm-up
            exchanges.setdefault(way, []).append(
                (percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000)
            )
        for size in SIZES:
            for way in order:
                if way == "asyncio" and size < SIZES[-1]:
                    continue  # ~5 MB/s: one size says it
                results.setdefault((way, size), []).append(one_transfer(way, total, size))
    print(
        f"One stream, {args.megabytes} MB per transfer, {args.rounds} rounds taking turns:"
        " median (min-max)\n"
    )
    print(f"{'way':18}{'write/read':>11}{'MB/s':>20}{'reader CPU ms/MB':>24}{'writer':>24}")
    for size in SIZES:
        for way in ways:
            if (way, size) not in results:
                continue
            runs = results[(way, size)]
            print(
                f"{way:18}{f'{size // 1024} KiB':>11}"
                f"{spread([r['mbps'] for r in runs]):>20}"
                f"{spread([r['reader_ms_per_mb'] for r in runs], 2):>24}"
                f"{spread([r['writer_ms_per_mb'] for r in runs], 2):>24}"
            )
    print(
        f"\nExchanges ({args.exchanges} per way and round): open a stream (tcp: a connection),"
        f" send {HELLO:,} bytes, read {len(REPLY):,} back; ms, median (min-max) of the rounds\n"
    )
    print(f"{'way':18}{'p50':>20}{'p99':>20}")
    for way in ways:
        runs = exchanges[way]
        print(f"{way:18}{spread([r[0] for r in runs], 3):>20}{spread([r[1] for r in runs], 3):>20}")


if __name__ == "__main__":
    main()
