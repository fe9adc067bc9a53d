"""How the CLI talks to a running daemon: JSON-RPC over loopback HTTP (gate.services.rpc)."""

from __future__ import annotations

import itertools
from collections.abc import Generator
from typing import Any

import httpx
import msgspec

from gate.config import Config
from gate.errors import GateError

__all__ = ["NOT_GATE", "DaemonNotRunning", "DaemonStopped", "RpcCallError", "RpcClient"]

NOT_GATE = -32099  # RpcCallError.code when whatever answers is not a Gate daemon


class DaemonNotRunning(GateError):
    pass


class DaemonStopped(DaemonNotRunning):
    """The daemon answered, then its event stream broke off (it crashed or was killed)."""


class RpcCallError(GateError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class RpcClient:
    def __init__(self, config: Config, timeout: float = 30.0, *, base: str | None = None) -> None:
        """`base`: the daemon's URL when it is not where `server.bind` says (a daemon
        started on port 0 prints where it listens)."""
        host, port = config.bind_host_port
        if host in ("0.0.0.0", "::"):  # the daemon listens everywhere: use loopback
            host = "127.0.0.1"
        self.base = base or (f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
        self.headers = {}
        if config.security.control_token:
            self.headers["authorization"] = f"Bearer {config.security.control_token}"
        self.timeout = timeout
        self._ids = itertools.count(1)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        body = {"jsonrpc": "2.0", "method": method, "id": next(self._ids), "params": params or {}}
        try:
            response = httpx.post(
                f"{self.base}/rpc", json=body, headers=self.headers, timeout=self.timeout
            )
        except httpx.ConnectError:
            raise DaemonNotRunning(f"no Gate daemon answers at {self.base}") from None
        except httpx.HTTPError as exc:
            raise DaemonNotRunning(f"the daemon at {self.base} did not answer: {exc}") from None
        if response.status_code == 401:
            raise RpcCallError(401, "the daemon refused the control token (security.control_token)")
        try:
            answer = msgspec.json.decode(response.content)
            if not isinstance(answer, dict) or not ("result" in answer or "error" in answer):
                raise ValueError
        except (msgspec.DecodeError, ValueError):
            raise RpcCallError(
                NOT_GATE, f"{self.base} answered HTTP {response.status_code}, not as a Gate daemon"
            ) from None
        if "error" in answer:
            raise RpcCallError(answer["error"]["code"], answer["error"]["message"])
        return answer["result"]

    def events(self) -> Generator[tuple[str, Any], None, None]:
        """(kind, data) for each live event, from `hello` on, until the daemon stops.

        DaemonNotRunning when no daemon answers; DaemonStopped when the stream breaks
        off after it began (a daemon that stops cleanly just ends it)."""
        kind = "message"
        started = False
        try:
            with httpx.stream(
                "GET",
                f"{self.base}/rpc/events",
                headers=self.headers,
                timeout=httpx.Timeout(self.timeout, read=None),
            ) as response:
                if response.status_code == 401:
                    raise RpcCallError(401, "the daemon refused the control token")
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        started = True
                        yield kind, msgspec.json.decode(line.removeprefix("data: "))
        except httpx.ConnectError:
            raise DaemonNotRunning(f"no Gate daemon answers at {self.base}") from None
        except httpx.HTTPError as exc:  # e.g. RemoteProtocolError: the body was cut short
            if started:
                raise DaemonStopped(f"the daemon at {self.base} went away: {exc}") from None
            raise DaemonNotRunning(f"the daemon at {self.base} did not answer: {exc}") from None

    def alive(self) -> bool:
        try:
            return httpx.get(f"{self.base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
