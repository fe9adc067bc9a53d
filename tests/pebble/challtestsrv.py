"""pebble-challtestsrv started on loopback random ports, and a DNS TXT query to it.

challtestsrv is the DNS a pebble CA asks during DNS-01 validation: a management API
(`/set-txt`, `/clear-txt`) sets the records, and its DNS port answers them. Only its
management and DNS-01 servers are started (`-http01 "" -https01 "" -tlsalpn01 ""`; this
version has no DoH server to turn off). `txt(name)` asks the DNS port as a resolver
would, with a query written here with the standard library, so a test checks what a CA
would see, not what challtestsrv was told."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import struct
import subprocess
import time
from typing import Self

import pytest

__all__ = ["Challtestsrv", "require_challtestsrv", "txt_query"]

BINARY = "pebble-challtestsrv"


def require_challtestsrv() -> str:
    path = shutil.which(BINARY)
    if path is None:
        pytest.skip(f"{BINARY} is not installed (Debian package pebble)")
    return path


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the DNS server takes both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


class Challtestsrv:
    def __init__(self) -> None:
        self.binary = require_challtestsrv()
        self.management_port = _free_port()
        self.dns_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def dns_address(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def start(self) -> Self:
        self.process = subprocess.Popen(
            [
                self.binary,
                "-management",
                f"127.0.0.1:{self.management_port}",
                "-dns01",
                self.dns_address,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{BINARY} exited: {self.process.stderr.read().decode()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.management_port), 0.2).close()
                with contextlib.suppress(OSError, TimeoutError):
                    self.txt("ready.test")
                    return self
            time.sleep(0.05)
        self.close()
        raise RuntimeError(f"{BINARY} did not start within 10 s")

    def txt(self, name: str) -> list[str]:
        return txt_query(name, ("127.0.0.1", self.dns_port))

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def txt_query(name: str, server: tuple[str, int], timeout: float = 2.0) -> list[str]:
    """The TXT values at `name` (RFC 1035: one UDP query, the answer section's TXT
    records, each record's character-strings joined)."""
    query_id = random.randrange(1 << 16)
    question = b"".join(
        bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")
    )
    packet = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + b"\x00"
    packet += struct.pack(">HH", 16, 1)  # TXT, IN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, server)
        reply, _ = sock.recvfrom(65535)
    answer_id, _flags, qdcount, ancount = struct.unpack(">HHHH", reply[:8])
    assert answer_id == query_id, "an answer to another query"
    at = 12
    for _ in range(qdcount):
        at = _skip_name(reply, at) + 4
    values = []
    for _ in range(ancount):
        at = _skip_name(reply, at)
        rtype, _rclass, _ttl, length = struct.unpack(">HHIH", reply[at : at + 10])
        at += 10
        rdata, at = reply[at : at + length], at + length
        if rtype == 16:
            parts, i = [], 0
            while i < len(rdata):
                parts.append(rdata[i + 1 : i + 1 + rdata[i]].decode())
                i += 1 + rdata[i]
            values.append("".join(parts))
    return values


def _skip_name(message: bytes, at: int) -> int:
    while True:
        length = message[at]
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return at + 2
        at += 1 + length
