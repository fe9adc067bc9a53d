"""What a conformance case holds: the target, the runner's iroh endpoints, and streams
that write down everything sent and received as evidence.

A case talks to the target only through a `Probe`: `dial()` a fresh connection (from a
stranger's key, or from the identity the target trusts), open a `Wire` on it, send
bytes, read frames. Every byte that crosses is noted (in hex) in `probe.evidence`, which
the report shows when the case fails. Reads are bounded by STEP_TIMEOUT; a target that
says nothing fails the case with "no answer", never hangs the run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Final

import trio
import trio.lowlevel

from gate.conformance.registry import CaseFailed, CaseSkipped
from gate.conformance.wire import hexdump, unpack
from gate.protocol import EOF, FrameDecoder, NodeId, ProtocolError
from gate.services.transport.quic import (
    ALPN,
    ConnectError,
    Connection,
    Endpoint,
    QuicStream,
    StreamReset,
    TransportError,
)

__all__ = ["STEP_TIMEOUT", "Ended", "Probe", "Target", "Wire"]

STEP_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class Target:
    node_id: NodeId
    addresses: list[str]
    front: tuple[str, int] | None = None  # a relay's TLS port (§7.4), for the TlsProxy cases


@dataclass(frozen=True)
class Ended:
    """How a stream ended: `reset` is None for a clean finish, else the reset code."""

    reset: int | None = None

    def __str__(self) -> str:
        return "finished" if self.reset is None else f"reset (code {self.reset})"


class Probe:
    def __init__(self, target: Target, stranger: Endpoint, friend: Endpoint | None) -> None:
        self.target = target
        self.stranger = stranger
        self._friend = friend
        self.evidence: list[str] = []
        self._connections: list[Connection] = []

    def note(self, line: str) -> None:
        self.evidence.append(line)

    @property
    def friend(self) -> Endpoint:
        if self._friend is None:
            raise CaseSkipped("needs --identity: a key the target trusts")
        return self._friend

    @property
    def own_id(self) -> str:
        return str(self.stranger.node_id)

    async def dial(self, *, trusted: bool = False, alpn: bytes = ALPN) -> Connection:
        endpoint = self.friend if trusted else self.stranger
        who = "a trusted key" if trusted else "a stranger's key"
        self.note(f"dial {self.target.node_id} from {who} ({endpoint.node_id}), ALPN {alpn!r}")
        with trio.fail_after(STEP_TIMEOUT):
            try:
                conn = await endpoint.connect(self.target.node_id, self.target.addresses, alpn=alpn)
            except ConnectError as exc:
                raise CaseFailed(f"cannot connect: {exc}", self.evidence) from None
        self._connections.append(conn)
        return conn

    async def open(self, conn: Connection, first: bytes = b"", label: str = "stream") -> Wire:
        """A new stream on `conn`, its first bytes (the preamble, usually) sent."""
        wire = Wire(self, await conn.open_stream(), label)
        if first:
            await wire.send(first)
        return wire

    async def stream(
        self, first: bytes = b"", *, trusted: bool = False, label: str = "stream"
    ) -> Wire:
        """A stream on a fresh connection (`dial`, then `open`), `first` sent."""
        return await self.open(await self.dial(trusted=trusted), first, label)

    def close(self) -> None:
        for conn in self._connections:
            conn.close()
        self._connections.clear()


class Wire:
    """One stream of a case, with its reads framed and everything noted."""

    def __init__(self, probe: Probe, stream: QuicStream, label: str) -> None:
        self.probe = probe
        self.stream = stream
        self.label = label
        self.decoder = FrameDecoder(1 << 20)
        self.raw_mode = False

    def note(self, line: str) -> None:
        self.probe.note(f"{self.label}: {line}")

    async def send(self, data: bytes) -> None:
        self.note(f"sent {hexdump(data)}")
        await self.stream.send_all(data)

    async def send_pieces(self, data: bytes, size: int = 1) -> None:
        """`data` in writes of `size` bytes, each its own QUIC write."""
        self.note(f"sent in pieces of {size} byte(s): {hexdump(data)}")
        for i in range(0, len(data), size):
            await self.stream.send_all(data[i : i + size])
            await trio.lowlevel.checkpoint()

    async def finish(self) -> None:
        self.note("finished the sending half")
        await self.stream.send_eof()

    async def reset(self, code: int = 0) -> None:
        self.note(f"reset the stream (code {code})")
        await self.stream.reset(code)

    async def frame(self, limit: float = STEP_TIMEOUT) -> bytes | Ended:
        """The next frame from the target, or how the stream ended between frames. A
        stream that ends inside a frame fails the case (§3.4)."""
        try:
            with trio.fail_after(limit):
                while (item := self.decoder.next_frame()) is not EOF:
                    if isinstance(item, bytes):
                        self.note(f"received frame {hexdump(item)}")
                        return item
                    data = await self.stream.receive_some(65536)
                    if not data:
                        self.note("received the end of the stream (finish)")
                    self.decoder.receive_data(data)
        except trio.TooSlowError:
            self.note(f"nothing within {limit:g} s")
            raise CaseFailed(f"no answer within {limit:g} s", self.probe.evidence) from None
        except StreamReset as exc:
            self.note(f"the target reset the stream (code {exc.code})")
            return Ended(exc.code)
        except ProtocolError as exc:
            raise CaseFailed(
                f"the target's bytes are not frames: {exc}", self.probe.evidence
            ) from None
        except TransportError as exc:
            self.note(f"the connection ended: {exc}")
            return Ended(-1)
        return Ended()

    async def value(self, limit: float = STEP_TIMEOUT) -> Any:
        """The next frame as a msgpack value, or Ended."""
        item = await self.frame(limit)
        if isinstance(item, Ended):
            return item
        try:
            return unpack(item)
        except ValueError as exc:
            raise CaseFailed(
                f"the target sent a frame that is not msgpack: {exc}", self.probe.evidence
            ) from None

    async def ends(self, limit: float = STEP_TIMEOUT) -> Ended:
        """Read to the end of the stream, whatever comes; fail if it does not end."""
        while not isinstance(item := await self.frame(limit), Ended):
            pass
        return item

    async def quiet(self, seconds: float = 3.0) -> str:
        """After the channel closed on our side: the target sends no frame (it may end
        the stream, or keep its half open: the spec does not make it finish)."""
        with trio.move_on_after(seconds):
            item = await self.frame(seconds + 1)
            if isinstance(item, Ended):
                return f"the stream {item}"
            raise CaseFailed("the target sent a frame on a closed channel", self.probe.evidence)
        return f"no frame within {seconds:g} s"

    async def close(self) -> None:
        with contextlib.suppress(TransportError, trio.BrokenResourceError):
            await self.stream.aclose()


def error_code(value: Any) -> int | None:
    """The code of an error object: bare (§3.5) or a NodeMessage/RelayMessage `error`
    envelope (a channel already running reports errors in its own shape); else None."""
    if isinstance(value, dict) and isinstance(value.get("payload"), dict):
        value = value["payload"]
    if isinstance(value, dict) and value.get("type") == "error":
        code = value.get("code")
        return code if isinstance(code, int) else None
    return None


async def expect_error(wire: Wire, code: int, *, bare_only: bool = False) -> str:
    """The target's first frame on `wire` is an error with `code`; the stream then ends."""
    value = await wire.value()
    if isinstance(value, Ended):
        raise CaseFailed(f"the stream {value} without an error frame", wire.probe.evidence)
    got = error_code(value)
    if got is None or (bare_only and "payload" in value):
        shape = "a bare error object" if bare_only else "an error"
        raise CaseFailed(
            f"expected {shape} with code {code}, got {value!r:.200}", wire.probe.evidence
        )
    if got != code:
        raise CaseFailed(f"error code {got}; expected {code}", wire.probe.evidence)
    message = value.get("payload", value).get("message", "")
    return f"error {got}: {message}"
