"""The relay's TCP front: each browser connection, from its first byte to the node.

1. Read the ClientHello, across as many TCP segments and TLS records as it takes, for at
   most `hello_timeout` seconds (gate.protocol.sni.ClientHelloReader bounds its size).
2. The SNI must be `<node-id>.<domain>`: the first label the whole 52-character node
   id, compared case-insensitively. A name that is not, a node that never activated its
   name, or one with no connection to this relay now: the client gets a TLS
   `unrecognized_name` alert and the connection is closed, counted by reason.
3. Open a tls_proxy stream on the node's connection: the preamble, a TlsProxyHeader
   (sni, client_addr), then exactly the bytes read so far. The node's first bytes are
   its TLS answer, or a bare error frame if it refused the stream (§3.5): then the
   client gets the alert too. Then `splice` both ways.

Caps on open connections (relay.toml): in all and per client address, checked as a
connection arrives, before anything is read; per node, once its name is known; and the
node's own, the streams it lets this relay have open at once (a stream not granted
within `connect_timeout`). Past one, the client gets a TLS `internal_error` alert and
the connection is closed, counted as `over_cap_<which>` (`global`, `client`, `node`,
`node_streams`). Every connection ends counted under one outcome (`outcomes`), a bad
ClientHello also by its reason (`bad_hello`), a routed one also by how its splice ended
(`ended`): gate.services.relay.status serves them as metrics.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Final

import msgspec
import trio

from gate.protocol import NodeId, StreamType, TlsProxyHeader, encode_frame, encode_preamble
from gate.protocol.errors import SniError
from gate.protocol.sni import ClientHelloReader
from gate.relay_config import RelayServerConfig
from gate.services.relay.registry import NameRegistry
from gate.services.relay.splice import abort, splice
from gate.services.transport.quic import Connection, TransportError

__all__ = ["TlsFront", "node_of_name"]

log = logging.getLogger("gate.relay")

# A fatal TLS alert, unrecognized_name (RFC 8446 §6.2: level 2, description 112), in a
# TLS 1.2-versioned record: what a TLS server says for a name it does not serve.
UNRECOGNIZED_NAME_ALERT: Final = bytes([21, 3, 3, 0, 2, 2, 112])
# internal_error (80): TLS has no "busy" alert; a client reports this one as a failure
# of the server, which a connection over a cap is.
OVER_CAP_ALERT: Final = bytes([21, 3, 3, 0, 2, 2, 80])
_READ: Final = 16 * 1024
_encode = msgspec.msgpack.Encoder().encode


def node_of_name(name: str, domain: str) -> NodeId | None:
    """The node a server name designates under `domain`, or None."""
    label, _, rest = name.rstrip(".").lower().partition(".")
    if rest != domain or len(label) != 52:
        return None
    try:
        node_id = NodeId.parse(label)
    except ValueError:
        return None
    return node_id if str(node_id) == label else None


class TlsFront:
    def __init__(
        self,
        config: RelayServerConfig,
        registry: NameRegistry,
        connection_to: Callable[[NodeId], Connection | None],
    ) -> None:
        self.config = config
        self.registry = registry
        self._connection_to = connection_to
        # Connections by outcome: routed, bad_client_hello, hello_timeout, unknown_name,
        # not_activated, node_unreachable, node_refused,
        # over_cap_{global,client,node,node_streams}.
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.bad_hello: collections.Counter[str] = collections.Counter()  # by reason
        self.ended: collections.Counter[str] = collections.Counter()  # routed: closed|idle|reset
        self.open_connections = 0
        self.per_client: collections.Counter[str] = collections.Counter()  # open, by address
        self.per_node: collections.Counter[NodeId] = collections.Counter()  # open, by node
        self.bytes_in = 0  # client -> node
        self.bytes_out = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from gate.config import parse_bind

        host, port = parse_bind(self.config.listen)
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        addresses = []
        for listener in listeners:
            address = listener.socket.getsockname()
            addresses.append(f"{address[0]}:{address[1]}")
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle_quietly, listeners)
            task_status.started(addresses)

    async def _handle_quietly(self, client: trio.SocketStream) -> None:
        try:
            peer = client.socket.getpeername()
        except OSError:  # reset before we looked
            await trio.aclose_forcefully(client)
            return
        host = peer[0]
        over = None
        if self.open_connections >= self.config.max_connections:
            over = "global"
        elif self.per_client[host] >= self.config.max_connections_per_client:
            over = "client"
        if over is not None:
            self._refuse(f"over_cap_{over}", f"{host}:{peer[1]}")
            await _refuse_unread(client)
            return
        self.open_connections += 1
        self.per_client[host] += 1
        try:
            await self.handle(client, f"{host}:{peer[1]}")
        except Exception as exc:  # one connection's failure stays in it
            log.warning("relay connection failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.open_connections -= 1
            self.per_client[host] -= 1
            if not self.per_client[host]:
                del self.per_client[host]
            await trio.aclose_forcefully(client)

    async def handle(self, client: trio.SocketStream, client_addr: str) -> None:
        reader = ClientHelloReader()
        name = None
        with trio.move_on_after(self.config.hello_timeout):
            try:
                while name is None:
                    data = await client.receive_some(_READ)
                    if not data:
                        self._bad_hello("ended_early", client_addr)
                        return
                    name = reader.feed(data)
            except SniError as exc:
                self._bad_hello(str(exc.reason), client_addr)
                return
            except (trio.BrokenResourceError, OSError):
                self._bad_hello("reset", client_addr)
                return
        if name is None:
            self._refuse("hello_timeout", client_addr)
            return
        node_id = node_of_name(name, self.config.domain)
        entry = self.registry.lookup(node_id) if node_id is not None else None
        if node_id is None or entry is None:
            self._refuse("unknown_name", client_addr, sni=name)
            await _send_alert(client)
            return
        if not entry.activated:
            self._refuse("not_activated", client_addr, sni=name)
            await _send_alert(client)
            return
        conn = self._connection_to(node_id)
        if conn is None:
            self._refuse("node_unreachable", client_addr, sni=name)
            await _send_alert(client)
            return
        if self.per_node[node_id] >= self.config.max_connections_per_node:
            self._refuse("over_cap_node", client_addr, sni=name)
            await _send_alert(client, OVER_CAP_ALERT)
            return
        self.per_node[node_id] += 1
        try:
            await self._route(client, client_addr, reader, name, node_id, conn)
        finally:
            self.per_node[node_id] -= 1
            if not self.per_node[node_id]:
                del self.per_node[node_id]

    async def _route(
        self,
        client: trio.SocketStream,
        client_addr: str,
        reader: ClientHelloReader,
        name: str,
        node_id: NodeId,
        conn: Connection,
    ) -> None:
        deadline = trio.current_time() + self.config.connect_timeout
        try:
            with trio.fail_at(deadline):
                stream = await conn.open_stream()
        except trio.TooSlowError:
            # QUIC opens a stream at once within the node's allowance (its MAX_STREAMS,
            # RELAY_STREAMS in gate.services.p2p.relay_client) and waits past it: the
            # node holds that many of this relay's connections now. A cap, the node's.
            self._refuse("over_cap_node_streams", client_addr, sni=name)
            await _send_alert(client, OVER_CAP_ALERT)
            return
        except (TransportError, trio.BrokenResourceError) as exc:
            self._refuse("node_unreachable", client_addr, sni=name, error=str(exc))
            await _send_alert(client)
            return
        try:
            with trio.fail_at(deadline):
                header = _encode(TlsProxyHeader(sni=name, client_addr=client_addr))
                await stream.send_all(
                    encode_preamble(StreamType.TLS_PROXY) + encode_frame(header) + reader.received
                )
        except (TransportError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            self._refuse("node_unreachable", client_addr, sni=name, error=str(exc))
            await abort(stream)
            await _send_alert(client)
            return
        self.bytes_in += len(reader.received)
        # The node's first bytes: a TLS record (its ServerHello), or a bare error frame
        # if it refused the stream (spec §3.5: a frame starts with 00, a record never).
        # Opening a QUIC stream and writing to it need no answer from the node, so a
        # node that died unnoticed is found here: nothing within connect_timeout.
        first, outcome = b"", "node_unreachable"
        with trio.move_on_after(self.config.connect_timeout):
            with contextlib.suppress(TransportError, trio.BrokenResourceError):
                first = await stream.receive_some(_READ)
                outcome = "node_refused"  # the node answered, with an end or an error
        if not first or first[0] == 0:
            self._refuse(outcome, client_addr, sni=name)
            await abort(stream)
            await _send_alert(client)
            return
        self.outcomes["routed"] += 1
        log.debug("connection routed", extra={"sni": name, "hello_bytes": len(reader.received)})
        try:
            await client.send_all(first)
        except (trio.BrokenResourceError, OSError):
            await abort(stream)
            return
        self.bytes_out += len(first)
        result = await splice(client, stream, idle_timeout=self.config.idle_timeout)
        self.bytes_in += result.a_to_b
        self.bytes_out += result.b_to_a
        self.ended[result.outcome] += 1
        log.debug(
            "relayed connection ended",
            extra={"node": node_id.short(), "outcome": result.outcome, "in": result.a_to_b},
        )

    def _refuse(self, outcome: str, client_addr: str, **extra: str) -> None:
        self.outcomes[outcome] += 1
        log.info("connection refused", extra={"outcome": outcome, "client": client_addr, **extra})

    def _bad_hello(self, reason: str, client_addr: str) -> None:
        self.bad_hello[reason] += 1
        self._refuse("bad_client_hello", client_addr, reason=reason)


async def _send_alert(client: trio.SocketStream, alert: bytes = UNRECOGNIZED_NAME_ALERT) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        with trio.move_on_after(1):
            await client.send_all(alert)
            await client.send_eof()


async def _refuse_unread(client: trio.SocketStream) -> None:
    """The over-cap alert to a connection nothing was read from, then a close that is a
    FIN, not a RST: what the client already sent is read and dropped first (at most
    64 KiB and half a second, so refusing stays cheap)."""
    await _send_alert(client, OVER_CAP_ALERT)
    with trio.move_on_after(0.5):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            drained = 0
            while drained < 4 * _READ and (data := await client.receive_some(_READ)):
                drained += len(data)
    await trio.aclose_forcefully(client)
