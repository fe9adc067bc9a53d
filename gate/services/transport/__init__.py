"""The iroh transport, and the only code that imports iroh: iroh driven natively from trio
(`iroh_trio`), faster bytes in and out of its generated bindings (`iroh_speedups`), and
endpoints, connections and QUIC streams with errors of our own (`quic`); framed
messages read from and written to a stream (`framed`).
"""

from __future__ import annotations

from gate.services.transport.framed import (
    ByteStream,
    FramedStream,
    close_quietly,
    receive_event,
)
from gate.services.transport.quic import (
    ALPN,
    BindError,
    ConnectError,
    Connection,
    ConnectionLost,
    Endpoint,
    IncomingConnection,
    PeerAddr,
    QuicStream,
    StreamReset,
    TransportError,
    bind_endpoint,
    parse_ticket,
)

__all__ = [
    "ALPN",
    "BindError",
    "ByteStream",
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "Endpoint",
    "FramedStream",
    "IncomingConnection",
    "PeerAddr",
    "QuicStream",
    "StreamReset",
    "TransportError",
    "bind_endpoint",
    "close_quietly",
    "parse_ticket",
    "receive_event",
]
