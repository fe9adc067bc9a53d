"""Run as a script inside a network namespace of its own (see test_hostile_http): starts
`gate serve`, opens 1,000 connections at once, and prints as JSON what each got and how
many connections the kernel's listen queue dropped (per namespace, so no other process
on the machine counts)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from tests.e2e.gate_process import GateServe

CONNECTIONS = 1000
REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def listen_overflows() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    raise RuntimeError("no TcpExt counters")


async def client(port: int, results: list[str]) -> None:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(REQUEST)
            data = b""
            while b"\r\n" not in data and (chunk := await stream.receive_some(4096)):
                data += chunk
        results.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
    except (OSError, trio.BrokenResourceError) as exc:
        results.append(f"{type(exc).__name__}: {exc}")


async def burst(port: int) -> list[str]:
    results: list[str] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(CONNECTIONS):
                nursery.start_soon(client, port, results)
    return results


def main() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with GateServe(dict(os.environ)) as gate:
        before = listen_overflows()
        results = trio.run(burst, int(gate.url.rsplit(":", 1)[1]))
        overflows = listen_overflows() - before
        alive = gate.proc is not None and gate.proc.poll() is None
    json.dump({"results": results, "overflows": overflows, "alive": alive}, sys.stdout)


if __name__ == "__main__":
    main()
