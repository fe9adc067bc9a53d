"""A Gate node over iroh, on asyncio: it serves node_control and http_proxy streams
(§5, §7) and makes them (`ask`). Section numbers are spec/protocol.md's."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

import httpx
import iroh

from . import wire
from .wire import WireError

ALPN = b"gate/1"  # §2.2
CHUNK = 256 * 1024  # body bytes per frame, well under 1 MiB (§7.1)
PREAMBLE_WAIT = 10.0
PING_EVERY = 15.0  # §5.5: the initiator pings at least every 20 s
SILENCE_LIMIT = 60.0  # §5.5: no node may end a channel for less silence
CLOSE_GRACE = 5.0  # §2.3: how long a last frame may take to be read before closing
# §7.1: hop-by-hop fields are not sent on (nor `host`, which names the upstream).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}
NOT_UPSTREAM = HOP_BY_HOP | {"trailer", "host"}


def log(*parts: object) -> None:
    """One event a line on stdout: what tests and people watch."""
    print(*parts, flush=True)


class Gone(Exception):
    """The peer reset or stopped the stream, or the connection is lost."""


class Stream:
    """One bidirectional QUIC stream: bytes in and out, iroh's errors as Gone."""

    def __init__(self, bi: iroh.BiStream) -> None:
        self.send_half, self.recv_half = bi.send(), bi.recv()

    async def write(self, data: bytes) -> None:
        try:
            await self.send_half.write_all(data)
        except iroh.IrohError as exc:
            raise Gone(str(exc)) from None

    async def finish(self) -> None:
        with contextlib.suppress(iroh.IrohError):
            await self.send_half.finish()

    async def read(self) -> bytes:
        try:
            return await self.recv_half.read(65536)  # b"": the peer finished (§1.6)
        except iroh.IrohError as exc:
            raise Gone(str(exc)) from None

    async def reject(self, code: int, message: str) -> None:
        """§3.5: one bare error object, then finish (never a reset, which could drop it)."""
        error = {"type": "error", "code": code, "message": message[:200]}
        with contextlib.suppress(Gone):
            await self.write(wire.frame(wire.encode(error)))
        await self.finish()


class Framed:
    """Messages from a stream, each checked against its channel's shape (§4.2)."""

    def __init__(self, stream: Stream, check: Callable[[dict], str], start: bytes = b"") -> None:
        self.stream, self.check = stream, check
        self.frames = wire.FrameReader()
        if start:  # bytes that came with the preamble (feeding b"" would mean the end)
            self.frames.feed(start)

    async def receive(self) -> tuple[str, dict] | None:
        """(event, message), or None when the peer finished cleanly."""
        while (payload := self.frames.next()) is None:
            if self.frames.at_end:
                return None
            self.frames.feed(await self.stream.read())
        message = wire.decode(payload)
        try:
            return self.check(message), message
        except WireError:
            if message.get("type") != "error":
                raise
            # §3.5: a stream the peer rejected starts with a bare error object.
            wire.check_error(message)
            raise WireError(message["code"], f"rejected: {message.get('message', '')}") from None


@dataclass
class Peer:
    """One connection's peer, as the transport authenticated it (§2.2)."""

    node_id: str
    connection: iroh.Connection
    refused: bool = False  # §5.4: this node refused its handshake on this connection


@dataclass
class Node:
    secret_key: bytes
    trusted: set[str]
    upstream: str | None = None  # an OpenAI-compatible server, e.g. http://127.0.0.1:8080
    canned: str | None = None  # else this text as a chat completion (None: echo requests)
    models: list[str] = field(default_factory=list)
    endpoint: iroh.Endpoint | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)  # asyncio keeps weak references

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def node_id(self) -> str:
        return wire.node_id_text(iroh.SecretKey.from_bytes(self.secret_key).public().to_bytes())

    async def bind(self, host: str = "127.0.0.1", port: int = 0) -> list[str]:
        self.endpoint = await bind(self.secret_key, host, port)
        return [a for a in self.endpoint.bound_sockets() if not a.startswith("[::]")]

    def capabilities(self) -> dict:  # §5.3
        models = [{"id": m, "provider": "reference"} for m in self.models]
        return {"node_id": self.node_id, "supported_models": models, "load_factor": 0.0}

    # --- accepting ------------------------------------------------------------------

    async def serve(self) -> None:
        assert self.endpoint is not None
        while (incoming := await self.endpoint.accept_next()) is not None:
            self.spawn(self.connection(incoming))

    async def connection(self, incoming: iroh.Incoming) -> None:
        try:
            connection = await (await incoming.accept()).connect()
        except iroh.IrohError:
            return
        if connection.alpn() != ALPN:  # §2.2
            connection.close(0, b"wrong ALPN")
            return
        peer = Peer(wire.node_id_text(connection.remote_id().to_bytes()), connection)
        with contextlib.suppress(iroh.IrohError):
            while True:
                stream = Stream(await connection.accept_bi())
                self.spawn(self.stream(peer, stream))

    async def stream(self, peer: Peer, stream: Stream) -> None:
        """§3.1-§3.5: read the preamble, then hand the stream to its channel."""
        reader = wire.PreambleReader(served={wire.NODE_CONTROL, wire.HTTP_PROXY})
        try:
            async with asyncio.timeout(PREAMBLE_WAIT):
                rest = b""
                while reader.stream_type is None:
                    rest = reader.feed(await stream.read())
            # §5.4: after a refused handshake no other stream from that peer is processed.
            if peer.refused:
                await stream.reject(wire.UNAUTHORIZED, "handshake refused on this connection")
                return
            if reader.stream_type == wire.NODE_CONTROL:
                await self.control_responder(peer, stream, rest)
                return
            # §5.4: http_proxy only from a trusted peer.
            if peer.node_id not in self.trusted:
                await stream.reject(wire.UNAUTHORIZED, "not a trusted peer")
                return
            await self.http_responder(peer, stream, rest)
        except WireError as exc:  # the channel is not running yet: a bare error (§3.5)
            await stream.reject(exc.code, str(exc))
        except (Gone, TimeoutError):
            pass

    # --- §5 NodeControl, responder ------------------------------------------------------

    async def control_responder(self, peer: Peer, stream: Stream, start: bytes) -> None:
        control = Control(stream, "responder", start)
        try:
            async with asyncio.timeout(PREAMBLE_WAIT):
                got = await control.receive()
            if got is None:
                return
            event, message = got
            if event != "handshake":  # the initiator gave up with an error
                return
            hello = message["payload"]
            # §5.4: the claimed id is the authenticated one, trusted, a version shared.
            reason = None
            if hello["node_id"] != peer.node_id:
                reason = "handshake node_id is not the connection's"
            elif peer.node_id not in self.trusted:
                reason = "not a trusted peer"
            elif wire.VERSION not in hello["versions"]:
                reason = "no common version (this node speaks 1)"
            if reason is not None:
                peer.refused = True
                log("refused", peer.node_id, reason)
                refusal = {
                    "type": "handshake_response",
                    "node_id": self.node_id,
                    "accepted": False,
                    "reason": reason,
                }
                await control.send(refusal, reply_to=message["id"])
                await close_after_read(peer.connection, stream, wire.UNAUTHORIZED, reason)
                return
            accept = {
                "type": "handshake_response",
                "node_id": self.node_id,
                "accepted": True,
                "version": wire.VERSION,
                "capabilities": self.capabilities(),
            }
            await control.send(accept, reply_to=message["id"])
            log("handshake accepted", peer.node_id)
            while True:
                try:
                    async with asyncio.timeout(SILENCE_LIMIT):
                        got = await control.receive()
                except TimeoutError:  # §5.5: the session ends, for both sides
                    await control.send({"type": "error", "code": wire.TIMEOUT, "message": "silent"})
                    await close_after_read(peer.connection, stream, wire.TIMEOUT, "silent")
                    return
                if got is None or got[0] == "error":
                    return
                await control.answer(*got, self.capabilities)
        except WireError as exc:  # running: the channel's own error message (§3.5, §4.2)
            with contextlib.suppress(WireError, Gone):
                await control.send({"type": "error", "code": exc.code, "message": str(exc)[:200]})
            await stream.finish()

    # --- §7 HttpProxy, responder -------------------------------------------------------

    async def http_responder(self, peer: Peer, stream: Stream, start: bytes) -> None:
        exchange = Exchange(stream, "responder", start)
        try:
            head, body = await exchange.read_request()
        except WireError as exc:
            await exchange.fail(exc.code, str(exc))
            return
        except Cancelled:
            return
        # The request is complete (its `end` is in), so the response may end (§7.2).
        # Meanwhile a cancel (error frame, reset, stop) stops the upstream call (§7.3).
        answer = asyncio.create_task(self.answer(exchange, head, body))
        watch = asyncio.create_task(exchange.watch_for_cancel())
        await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not watch.done():
            watch.cancel()
            answer.result()
        else:  # a cancel wins, even when the answer ended in the same turn
            answer.cancel()
            # It may have ended already, failing to write to the cancelled stream.
            with contextlib.suppress(asyncio.CancelledError, WireError, Gone):
                await answer
            code = watch.result()
            if code is None:
                log("cancelled by requester", head["target"])
            else:  # the requester broke the protocol: tell it (§4.2)
                await exchange.fail(code, "unexpected frame from the requester")
        await stream.finish()

    async def answer(self, exchange: Exchange, head: dict, body: bytes) -> None:
        if self.upstream is None:  # no upstream: echo, or the model list and canned text
            if self.canned is None:  # echo: the request as this node received it
                seen = {k: head.get(k) for k in ("method", "target", "headers")}
                reply = json.dumps({**seen, "body_length": len(body)}).encode()
            elif head["target"].startswith("/v1/models"):
                listing = {
                    "object": "list",
                    "data": [{"id": m, "object": "model"} for m in self.models],
                }
                reply = json.dumps(listing).encode()
            else:
                reply = canned(self.canned.encode())
            await exchange.respond(200, [("content-type", "application/json")], reply)
            return
        headers = [(k, v) for k, v in head.get("headers") or [] if k.lower() not in NOT_UPSTREAM]
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=5)) as client:
                request = client.build_request(
                    head["method"], self.upstream + head["target"], headers=headers, content=body
                )
                response = await client.send(request, stream=True)
                async with contextlib.aclosing(response.aiter_raw()) as chunks:
                    await exchange.respond(
                        response.status_code,
                        [
                            (k, v)
                            for k, v in response.headers.multi_items()
                            if k.lower() not in HOP_BY_HOP
                        ],
                        chunks,
                    )
                await response.aclose()
        except httpx.TimeoutException as exc:  # §7.5: no HTTP status can say it any more
            await exchange.fail(wire.TIMEOUT, f"upstream: {exc!r}")
        except httpx.HTTPError as exc:
            await exchange.fail(wire.UNAVAILABLE, f"upstream: {exc!r}")

    # --- dialing (the initiator side) ---------------------------------------------------

    async def dial(self, node_id: str, addresses: list[str]) -> Session:
        """Connect, and complete the NodeControl handshake (§5.4) with its heartbeat."""
        assert self.endpoint is not None
        key = iroh.EndpointId.from_bytes(wire_key(node_id))
        connection = await self.endpoint.connect(iroh.EndpointAddr(key, None, addresses), ALPN)
        stream = Stream(await connection.open_bi())
        control = Control(stream, "initiator", b"")
        await stream.write(wire.preamble(wire.NODE_CONTROL))
        hello = {
            "type": "handshake",
            "node_id": self.node_id,
            "versions": [wire.VERSION],
            "agent": "gate-reference/1",
            "capabilities": self.capabilities(),
        }
        await control.send(hello)
        got = await control.receive()
        if got is None:
            raise WireError(wire.TRUNCATED, "the peer ended the control stream")
        answer = got[1]["payload"]
        if got[0] != "handshake_accepted":
            connection.close(wire.UNAUTHORIZED, b"refused")  # §5.4
            raise WireError(wire.UNAUTHORIZED, f"refused: {answer.get('reason')}")
        # §5.4: the response names the node we dialed, in a version we offered.
        if answer["node_id"] != node_id or answer["version"] != wire.VERSION:
            await control.send(
                {"type": "error", "code": wire.UNAUTHORIZED, "message": "bad response"}
            )
            connection.close(wire.UNAUTHORIZED, b"bad handshake response")
            raise WireError(wire.UNAUTHORIZED, "the handshake response does not check out")
        session = Session(connection, control)
        session.heartbeat = asyncio.create_task(session.keep_alive(self.capabilities))
        return session


@dataclass
class Session:
    """A dialed connection with its NodeControl channel established."""

    connection: iroh.Connection
    control: Control
    heartbeat: asyncio.Task | None = None

    async def keep_alive(self, capabilities: Callable[[], dict]) -> None:
        """§5.5: the initiator pings every PING_EVERY and answers what the peer sends."""
        nonce = 0

        async def ping() -> None:
            nonlocal nonce
            while True:
                await asyncio.sleep(PING_EVERY)
                nonce += 1
                await self.control.send({"type": "ping", "nonce": nonce})

        pinger = asyncio.create_task(ping())
        try:
            while (got := await self.control.receive()) is not None and got[0] != "error":
                await self.control.answer(*got, capabilities)
        except (WireError, Gone):
            pass
        finally:
            pinger.cancel()

    async def request(self, method: str, target: str, headers: list, body: bytes) -> Exchange:
        """§7.1: open an http_proxy stream and send the whole request. The send half
        stays open after `end`: a cancel can still go out as a frame (§7.3)."""
        stream = Stream(await self.connection.open_bi())
        exchange = Exchange(stream, "initiator", b"")
        data = wire.preamble(wire.HTTP_PROXY)
        data += exchange.frame(
            {
                "type": "request_head",
                "method": method,
                "target": target,
                "headers": [list(h) for h in headers],
            }
        )
        for offset in range(0, len(body), CHUNK):
            data += exchange.frame({"type": "body", "data": body[offset : offset + CHUNK]})
        await stream.write(data + exchange.frame({"type": "end"}))
        return exchange

    def close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
        self.connection.close(0, b"done")


class Control(Framed):
    """A NodeControl channel (§5): envelopes out, checked messages in, one state table."""

    def __init__(self, stream: Stream, role: str, start: bytes) -> None:
        super().__init__(stream, wire.check_node_message, start)
        self.role, self.table, self.ids = role, wire.NodeControlState(), 0
        self.other = "responder" if role == "initiator" else "initiator"

    async def send(self, payload: dict, reply_to: int | None = None) -> None:
        event = payload["type"]
        if event == "handshake_response":  # §5.2: the event says which answer it is
            event = "handshake_accepted" if payload["accepted"] else "handshake_refused"
        self.table.apply(self.role, event)
        self.ids += 1
        message = {
            "version": wire.VERSION,
            "id": self.ids,
            "timestamp": int(time.time() * 1000),
            "payload": payload,
        }
        if reply_to is not None:
            message["reply_to"] = reply_to
        await self.stream.write(wire.frame(wire.encode(message)))

    async def receive(self) -> tuple[str, dict] | None:
        got = await super().receive()
        if got is None:
            if not self.table.may_finish():  # §4.3
                raise WireError(wire.TRUNCATED, "control stream ended early")
            return None
        self.table.apply(self.other, got[0])
        return got

    async def answer(self, event: str, message: dict, capabilities: Callable[[], dict]) -> None:
        """§5.5: ping gets pong (same nonce), capability_request its response."""
        if event == "ping":
            pong = {"type": "pong", "nonce": message["payload"]["nonce"]}
            await self.send(pong, reply_to=message["id"])
        elif event == "capability_request":
            answer = {"type": "capability_response", "capabilities": capabilities()}
            await self.send(answer, reply_to=message["id"])
        # pong and capability_response need no answer; an unasked pong is no error.


class Cancelled(Exception):
    """The requester sent error or finished/reset before its `end`."""


class Exchange(Framed):
    """An http_proxy channel (§7), either end."""

    def __init__(self, stream: Stream, role: str, start: bytes) -> None:
        super().__init__(stream, wire.check_http_frame, start)
        self.role, self.table = role, wire.HttpProxyState()
        self.other = "responder" if role == "initiator" else "initiator"

    def frame(self, message: dict) -> bytes:
        self.table.apply(self.role, message["type"])
        return wire.frame(wire.encode(message))

    async def receive(self) -> tuple[str, dict] | None:
        got = await super().receive()
        if got is None:
            if not self.table.may_finish(self.other):  # §4.3
                raise WireError(wire.TRUNCATED, "the peer finished before its end")
            return None
        self.table.apply(self.other, got[0])
        return got

    async def fail(self, code: int, message: str) -> None:
        """Send StreamError if the table still allows it (§7.2 rule 3), then finish."""
        with contextlib.suppress(WireError, Gone):
            await self.stream.write(
                self.frame({"type": "error", "code": code, "message": message[:200]})
            )
        await self.stream.finish()

    async def read_request(self) -> tuple[dict, bytes]:
        """The request head and its whole body, up to `end`."""
        head, body = None, bytearray()
        while True:
            got = await self.receive()
            if got is None or got[0] == "error":
                raise Cancelled
            event, message = got
            if event == "request_head":
                head = message
            elif event == "body":
                body += message["data"]
            elif event == "end":
                assert head is not None
                return head, bytes(body)

    async def watch_for_cancel(self) -> int | None:
        """After the request: returns when the requester cancels (None) or breaks the
        protocol (its code). Finishing after `end` is allowed and changes nothing."""
        try:
            while (got := await self.receive()) is not None:
                if got[0] == "error":
                    return None
            await asyncio.Event().wait()  # finished cleanly: wait to be cancelled
        except WireError as exc:
            return exc.code
        except Gone:  # reset or stopped: a cancel too (§7.3)
            return None
        return None

    async def respond(self, status: int, headers: list, body: bytes | AsyncIterator[bytes]) -> None:
        head = self.frame(
            {"type": "response_head", "status": status, "headers": [[k, v] for k, v in headers]}
        )
        if isinstance(body, bytes):
            await self.stream.write(
                head + self.frame({"type": "body", "data": body}) + self.frame({"type": "end"})
            )
            return
        await self.stream.write(head)
        async for chunk in body:  # §7.1: each chunk as it comes, no frame over 1 MiB
            for offset in range(0, len(chunk), CHUNK):
                data = chunk[offset : offset + CHUNK]
                await self.stream.write(self.frame({"type": "body", "data": data}))
        await self.stream.write(self.frame({"type": "end"}))

    async def response(self) -> AsyncIterator[tuple[str, dict]]:
        """The requester's view: response_head, body... and end; WireError on error."""
        while True:
            got = await self.receive()
            if got is None:
                return
            if got[0] == "error":
                raise WireError(got[1]["code"], got[1].get("message", ""))
            yield got
            if got[0] == "end":
                return


# --- helpers ------------------------------------------------------------------------


async def close_after_read(
    connection: iroh.Connection, stream: Stream, code: int, why: str
) -> None:
    """§2.3: finish, wait until the peer closes or finishes (it has read us), then close."""
    await stream.finish()
    with contextlib.suppress(TimeoutError, Gone):
        async with asyncio.timeout(CLOSE_GRACE):
            while await stream.read():
                pass
    connection.close(code, why.encode()[:100])


def canned(text: bytes) -> bytes:
    """A minimal OpenAI chat completion carrying `text`."""
    return json.dumps(
        {
            "id": "chatcmpl-reference",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "canned",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text.decode()},
                }
            ],
        }
    ).encode()


def wire_key(node_id: str) -> bytes:
    if not wire.is_node_id(node_id):
        raise ValueError(f"not a canonical node id: {node_id!r}")
    return base64.b32decode(node_id.upper() + "====")


class _Bind(iroh.Preset):
    """iroh's minimal preset (no discovery, no relays) on the given socket addresses."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    def apply(self, builder) -> None:
        builder.apply_minimal()
        for address in self.addresses:
            builder.bind_addr(address)


async def bind(secret_key: bytes, host: str, port: int) -> iroh.Endpoint:
    options = iroh.EndpointOptions(
        preset=_Bind([f"{host}:{port}"]),
        secret_key=secret_key,
        alpns=[ALPN],
        relay_mode=iroh.RelayMode.disabled(),
    )
    return await iroh.Endpoint.bind(options)
