"""How the CLI talks to a running daemon: JSON-RPC over loopback HTTP (gate.services.control.rpc).

The standard library's http.client, not an HTTP library: the daemon is on this machine
and speaks plain HTTP/1.1, so a dependency would buy nothing, and every CLI command
would pay for importing it before it could say a word.
"""

from __future__ import annotations

import http.client
import itertools
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gate.config import Config
from gate.errors import GateError

__all__ = [
    "NOT_GATE",
    "WRONG_NODE",
    "DaemonNotRunning",
    "DaemonStopped",
    "RpcCallError",
    "RpcClient",
    "WrongNode",
]

NOT_GATE = -32099  # RpcCallError.code when whatever answers is not a Gate daemon
WRONG_NODE = -32098  # RpcCallError.code when the daemon is not the node the caller expects

# What a connection that fails or breaks raises (http.client's own, and the socket's).
_IO_ERRORS = (OSError, http.client.HTTPException)


class DaemonNotRunning(GateError):
    pass


class DaemonStopped(DaemonNotRunning):
    """The daemon answered, then its event stream broke off (it crashed or was killed)."""


class RpcCallError(GateError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class WrongNode(RpcCallError):
    """The daemon that answers is another node than the one expected: nothing was asked."""

    def __init__(self, message: str) -> None:
        super().__init__(WRONG_NODE, message)


class RpcClient:
    def __init__(
        self,
        config: Config,
        timeout: float = 30.0,
        *,
        base: str | None = None,
        expect_node: str | None = None,
    ) -> None:
        """`base`: the daemon's URL when it is not where `server.bind` says (a daemon
        started on port 0 prints where it listens). `expect_node`: the node id the
        daemon must have (checked with `node_status` before the first other call, so a
        daemon of another node is never asked to act); "" when `config`'s data dir has
        no node yet, so no daemon can be its; None: any daemon."""
        host, port = config.bind_host_port
        if host in ("0.0.0.0", "::"):  # the daemon listens everywhere: use loopback
            host = "127.0.0.1"
        self.base = base or (f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
        url = urlsplit(self.base)
        # http.client brackets an IPv6 host in the Host header itself.
        self._host, self._port = url.hostname or "127.0.0.1", url.port
        self.headers = {}
        if config.security.control_token:
            self.headers["authorization"] = f"Bearer {config.security.control_token}"
        self.timeout = timeout
        self._ids = itertools.count(1)
        self.expect_node = expect_node
        self._data_dir = config.data_dir
        self._checked = expect_node is None

    def _check_node(self, status: Any = None) -> None:
        """WrongNode unless the daemon is the expected node (`status`: its node_status
        answer, when already asked)."""
        if self._checked:
            return
        if status is None:
            status = self._call("node_status", None)
        actual = status.get("node_id") if isinstance(status, dict) else None
        if actual != self.expect_node:
            if not self.expect_node:
                raise WrongNode(
                    f"the daemon at {self.base} is node {actual}, but this config's data dir "
                    f"{self._data_dir} has no node key: it is another node's daemon; "
                    "nothing done"
                )
            raise WrongNode(
                f"the daemon at {self.base} is node {actual}, not this config's node "
                f"{self.expect_node} (data dir {self._data_dir}); nothing done"
            )
        self._checked = True

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        """An open connection; DaemonNotRunning when nothing listens there."""
        connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            connection.connect()
        except TimeoutError as exc:
            raise self._no_answer(exc) from None
        except OSError:  # refused, unreachable, no such host
            raise DaemonNotRunning(f"no Gate daemon answers at {self.base}") from None
        return connection

    def _no_answer(self, exc: BaseException) -> DaemonNotRunning:
        # Some of http.client's errors have no message (a bare HTTPException): name them.
        return DaemonNotRunning(
            f"the daemon at {self.base} did not answer: {str(exc) or type(exc).__name__}"
        )

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """The method's result; WrongNode (before it is called) when the daemon is not
        the expected node."""
        if method == "node_status":  # read-only: ask, then check the answer
            status = self._call(method, params)
            self._check_node(status)
            return status
        self._check_node()
        return self._call(method, params)

    def _call(self, method: str, params: dict[str, Any] | None) -> Any:
        body = {"jsonrpc": "2.0", "method": method, "id": next(self._ids), "params": params or {}}
        connection = self._connect(self.timeout)
        try:
            connection.request(
                "POST",
                "/rpc",
                body=msgspec.json.encode(body),
                headers={**self.headers, "content-type": "application/json"},
            )
            response = connection.getresponse()
            status, content = response.status, response.read()
        except _IO_ERRORS as exc:
            raise self._no_answer(exc) from None
        finally:
            connection.close()
        if status == 401:
            raise RpcCallError(401, "the daemon refused the control token (security.control_token)")
        try:
            answer = msgspec.json.decode(content)
            if not isinstance(answer, dict) or not ("result" in answer or "error" in answer):
                raise ValueError
        except (msgspec.DecodeError, ValueError):
            raise RpcCallError(
                NOT_GATE, f"{self.base} answered HTTP {status}, not as a Gate daemon"
            ) from None
        if "error" in answer:
            raise RpcCallError(answer["error"]["code"], answer["error"]["message"])
        return answer["result"]

    def events(self) -> Generator[tuple[str, Any], None, None]:
        """(kind, data) for each live event, from `hello` on, until the daemon stops.

        DaemonNotRunning when no daemon answers; DaemonStopped when the stream breaks
        off after it began (a daemon that stops cleanly just ends it)."""
        self._check_node()
        kind = "message"
        started = False
        connection = self._connect(self.timeout)
        try:
            connection.request("GET", "/rpc/events", headers=self.headers)
            # Events may be minutes apart: from here on, wait for them as long as it takes.
            connection.sock.settimeout(None)
            response = connection.getresponse()
            if response.status == 401:
                raise RpcCallError(401, "the daemon refused the control token")
            for line in _lines(response):
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    started = True
                    yield kind, msgspec.json.decode(line.removeprefix("data: "))
        except _IO_ERRORS as exc:
            if started:
                raise DaemonStopped(f"the daemon at {self.base} went away: {exc}") from None
            raise self._no_answer(exc) from None
        finally:
            connection.close()

    def alive(self) -> bool:
        try:
            connection = self._connect(2)
        except DaemonNotRunning:
            return False
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except _IO_ERRORS:
            return False
        finally:
            connection.close()


def _lines(response: http.client.HTTPResponse) -> Generator[str, None, None]:
    """The body's lines as they arrive, until it ends.

    IncompleteRead when it is cut short: that is how a daemon that died is told from one
    that ended the stream. read1, not readline: on a chunked body readline takes a cut
    for the end, read1 raises; a body of a promised length that stops short, neither."""
    buffer = b""
    while chunk := response.read1():
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            yield line.decode().removesuffix("\r")
    if response.length:  # bytes promised and never sent
        raise http.client.IncompleteRead(buffer, response.length)
