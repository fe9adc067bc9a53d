"""The relay door: a relay's TlsProxy stream (spec §7.4) ended here, with TLS.

The relay sends one TlsProxyHeader frame, then the browser's raw TLS bytes, from its
ClientHello on. This node wraps what follows the frame in TLS with its own certificate
(gate.services.http.tls) and serves HTTP/1.1 on it with the same hypercorn protocol as
its listener (gate.services.http.server.serve_stream), to the relay door's router:
the API, behind an API key always, and neither the control plane nor the web UI
(gate.services.http.router.Door.RELAY). `client_addr` is what the relay says, not
authenticated: it only names the client in logs and in the scope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import msgspec
import trio

from gate.protocol import EOF, NEED_DATA, ErrorCode, FrameDecoder, ProtocolError, TlsProxyHeader
from gate.services.http.router import ASGIApp
from gate.services.http.server import serve_stream
from gate.services.http.tls import NodeCertificate
from gate.services.p2p.dispatch import IncomingStream, reject
from gate.services.transport.framed import close_quietly, receive_event
from gate.services.transport.quic import QuicStream, TransportError

__all__ = ["PrefixedStream", "TlsDoor"]

log = logging.getLogger("gate.p2p.tls")

_HEADER_TIMEOUT: Final = 10.0
_decode_header = msgspec.msgpack.Decoder(TlsProxyHeader).decode


class PrefixedStream(trio.abc.HalfCloseableStream):
    """`stream`, with `prefix` read first: the TLS bytes that came with the header."""

    def __init__(self, prefix: bytes, stream: QuicStream) -> None:
        self._prefix = prefix
        self.stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class TlsDoor:
    def __init__(self, certificate: NodeCertificate, app: Callable[[], ASGIApp]) -> None:
        self.certificate = certificate
        self._app = app

    async def serve(self, incoming: IncomingStream) -> None:
        stream = incoming.stream
        decoder = FrameDecoder()
        if incoming.trailing:  # b"" would tell the decoder the stream has ended
            decoder.receive_data(incoming.trailing)
        try:
            with trio.fail_after(_HEADER_TIMEOUT):
                frame = await receive_event(stream, decoder)
            if frame is EOF or frame is NEED_DATA:
                await close_quietly(stream)
                return
            assert isinstance(frame, bytes)
            header = _decode_header(frame)
        except (msgspec.DecodeError, msgspec.ValidationError):
            await reject(stream, ErrorCode.INVALID_MESSAGE, "expected a tls_proxy_header")
            return
        except ProtocolError as exc:
            await reject(stream, exc.code, str(exc))
            return
        except (trio.TooSlowError, TransportError, trio.BrokenResourceError):
            await close_quietly(stream)
            return
        context = self.certificate.context()
        if context is None:
            await reject(stream, ErrorCode.UNAVAILABLE, "this node has no certificate yet")
            return
        tls = trio.SSLStream(
            PrefixedStream(decoder.take_remaining(), stream), context, server_side=True
        )
        host, _, port = (header.client_addr or "").rpartition(":")
        client = (host.strip("[]") or "relay", int(port) if port.isdigit() else 0)
        log.debug("relayed connection", extra={"relay": incoming.remote.short(), "sni": header.sni})
        await serve_stream(self._app(), tls, client=client)

    async def serve_tcp(self, stream: trio.SocketStream) -> None:
        """The same door on a TCP connection (`tls.listen`): the same certificate, TLS
        and router, with no relay in between."""
        context = self.certificate.context()
        if context is None:
            await trio.aclose_forcefully(stream)
            return
        try:
            peer = stream.socket.getpeername()
        except OSError:  # already gone
            await trio.aclose_forcefully(stream)
            return
        tls = trio.SSLStream(stream, context, server_side=True)
        await serve_stream(self._app(), tls, client=(str(peer[0]), int(peer[1])))
