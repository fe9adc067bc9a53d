"""Foundation benchmark: the protocol codec and the daemon's start-up.

Prints figures side by side in one run (ratios against a baseline measured in the same
run, because the machine is shared and noisy). Every loop is bounded in count and time.

    .venv/bin/python bench/foundation.py
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import msgspec

from gate.protocol import (
    HTTP_PROXY,
    NODE_CONTROL,
    Body,
    Channel,
    ClientHelloReader,
    End,
    Handshake,
    HandshakeResponse,
    NodeMessage,
    Ping,
    Pong,
    RequestHead,
    ResponseHead,
    Role,
)

NODE = "a" * 52
TIME_LIMIT = 3.0  # seconds per measurement, at most


def bounded(fn, count: int) -> tuple[int, float]:
    """Run fn up to `count` times or TIME_LIMIT seconds; return (runs, seconds)."""
    start = time.perf_counter()
    runs = 0
    while runs < count and time.perf_counter() - start < TIME_LIMIT:
        fn()
        runs += 1
    return runs, time.perf_counter() - start


def body_throughput(chunk: int) -> tuple[float, float]:
    """MB/s through a requester->responder HttpProxy channel pair vs a plain copy."""
    data = os.urandom(chunk)
    requester, responder = Channel(HTTP_PROXY, Role.INITIATOR), Channel(HTTP_PROXY, Role.RESPONDER)
    for message in (RequestHead(method="POST", target="/v1/chat/completions"), End()):
        responder.receive_data(requester.send(message))
        responder.next_event()
    requester.receive_data(responder.send(ResponseHead(status=200)))
    requester.next_event()
    sender, receiver = responder, requester
    frame = Body(data=data)

    def one() -> None:
        receiver.receive_data(sender.send(frame))
        receiver.next_event()

    runs, secs = bounded(one, 20_000)
    ours = runs * chunk / secs / 1e6
    buf = bytearray()

    def copy() -> None:
        buf[:] = data
        bytes(buf)

    runs, secs = bounded(copy, 20_000)
    return ours, runs * chunk / secs / 1e6


def ping_rate() -> float:
    a, b = Channel(NODE_CONTROL, Role.INITIATOR), Channel(NODE_CONTROL, Role.RESPONDER)
    msg = lambda p: NodeMessage(version=1, id=1, timestamp=0, payload=p)  # noqa: E731
    b.receive_data(a.send(msg(Handshake(node_id=NODE, versions=[1]))))
    b.next_event()
    a.receive_data(b.send(msg(HandshakeResponse(node_id=NODE, accepted=True, version=1))))
    a.next_event()
    ping, pong = msg(Ping(nonce=1)), msg(Pong(nonce=1))

    def round_trip() -> None:
        b.receive_data(a.send(ping))
        b.next_event()
        a.receive_data(b.send(pong))
        a.next_event()

    runs, secs = bounded(round_trip, 200_000)
    return runs / secs


def raw_msgpack_rate() -> float:
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(NodeMessage)
    ping = NodeMessage(version=1, id=1, timestamp=0, payload=Ping(nonce=1))
    runs, secs = bounded(
        lambda: (dec.decode(enc.encode(ping)), dec.decode(enc.encode(ping))), 200_000
    )
    return runs / secs


def client_hello_times() -> tuple[int, float, float]:
    """A real browser's ClientHello (spec/vectors): its size, µs to read its SNI fed in
    one piece, and ms fed one byte at a time."""
    vectors = pathlib.Path(__file__).resolve().parents[1] / "spec/vectors/client_hello.json"
    captured = json.loads(vectors.read_text())["captured"]
    hello = bytes.fromhex(next(v for v in captured if "Chromium" in v["name"])["hex"])
    runs, secs = bounded(lambda: ClientHelloReader().feed(hello), 50_000)
    bytes_ = [hello[i : i + 1] for i in range(len(hello))]

    def byte_by_byte() -> None:
        reader = ClientHelloReader()
        for byte in bytes_:
            reader.feed(byte)

    slow_runs, slow_secs = bounded(byte_by_byte, 200)
    return len(hello), secs / runs * 1e6, slow_secs / slow_runs * 1e3


def serve_startup(samples: int = 3) -> tuple[float, float, float]:
    """Seconds from exec to 'listening', RSS (MB) once ready, /health p50 (ms)."""
    ready, rss, latencies = [], [], []
    for _ in range(samples):
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home}
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "gate", "serve", "--bind", "127.0.0.1:0"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            try:
                url = None
                assert proc.stdout is not None
                for line in proc.stdout:
                    if m := re.search(r"listening on (\S+)", line):
                        url = m.group(1)
                        break
                ready.append(time.perf_counter() - start)
                assert url, "gate serve did not start"
                with httpx.Client() as client:
                    for _ in range(200):
                        t = time.perf_counter()
                        client.get(f"{url}/health").raise_for_status()
                        latencies.append((time.perf_counter() - t) * 1000)
                with open(f"/proc/{proc.pid}/status") as f:
                    rss.append(int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024)
            finally:
                proc.terminate()
                proc.wait(timeout=15)
                proc.stdout.close()
    return statistics.median(ready), statistics.median(rss), statistics.median(latencies)


def main() -> None:
    print("Gate foundation benchmark (bounded loops; ratios are within this run)\n")
    print(f"{'measure':44} {'Gate':>12} {'baseline':>12} {'ratio':>7}")
    for chunk in (4096, 65536):
        ours, base = body_throughput(chunk)
        print(
            f"{f'HttpProxy body frames, {chunk // 1024} KiB chunks (MB/s)':44} "
            f"{ours:12.0f} {base:12.0f} {ours / base:7.2f}  (baseline: bytes copy)"
        )
    pings, raw = ping_rate(), raw_msgpack_rate()
    print(
        f"{'NodeControl ping/pong round trips (/s)':44} {pings:12.0f} {raw:12.0f} "
        f"{pings / raw:7.2f}  (baseline: msgpack encode+decode only)"
    )
    size, whole_us, byte_ms = client_hello_times()
    print(f"\n{f'SNI of a {size}-byte Chromium ClientHello (µs)':44} {whole_us:12.1f}")
    print(f"{'  the same fed one byte at a time (ms)':44} {byte_ms:12.2f}")
    ready, rss, p50 = serve_startup()
    print(f"\n{'gate serve: exec to listening (s)':44} {ready:12.2f}")
    print(f"{'gate serve: RSS once ready (MB)':44} {rss:12.1f}")
    print(f"{'GET /health, sequential, p50 (ms)':44} {p50:12.2f}")


if __name__ == "__main__":
    main()
