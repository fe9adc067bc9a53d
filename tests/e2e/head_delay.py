"""A TCP proxy between Gate and an engine that holds the engine's answer to each POST for
a while: the head and all, as Ollama does until its first token (and any engine while
it loads a model). The engine behind it is the real llama.cpp, whose server sends its
head at once; no engine that runs here holds it, so the proxy adds the wait, nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class HeadDelayingProxy:
    """`with HeadDelayingProxy(engine_url, delay) as proxy:` listens on `proxy.root_url`."""

    def __init__(self, upstream_url: str, delay: float) -> None:
        host, port = upstream_url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self._upstream = (host, int(port))
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.root_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False

    def __enter__(self) -> HeadDelayingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target, *args) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream, timeout=60)
            self._sockets += [client, upstream]
            hold = [0.0]  # until when the engine's bytes wait (monotonic time)
            self._spawn(self._requests, client, upstream, hold)
            self._spawn(self._answers, upstream, client, hold)

    def _requests(self, client: socket.socket, upstream: socket.socket, hold: list[float]) -> None:
        while data := _recv(client):
            if data.startswith(b"POST "):  # a request begins (health checks are GETs)
                hold[0] = time.monotonic() + self.delay
            upstream.sendall(data)
        _close(upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket, hold: list[float]) -> None:
        while data := _recv(upstream):
            time.sleep(max(0.0, hold[0] - time.monotonic()))
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
