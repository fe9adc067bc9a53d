"""Server-Sent Events, sans-IO: bytes in, events out; events in, bytes out.

Theory of operation
-------------------
Both OpenAI and Anthropic stream responses as `text/event-stream`, whose grammar is
the WHATWG HTML Living Standard §9.2.6 "Interpreting an event stream". The decoder
follows it:

* the stream is UTF-8; one leading BOM is dropped;
* lines end in CRLF, LF or CR, and a CRLF may arrive split across two `feed()` calls
  (the CR ends the line at once; a LF that starts the next call is then skipped);
* a line starting with ":" is a comment; otherwise the field name runs to the first
  ":" and one space after it is dropped from the value; a line with no ":" is a field
  with an empty value;
* `data` values are joined with "\\n"; `event` sets the type; `id` sets the last
  event ID unless it contains NUL, and that ID persists across events (spec); `retry`
  sets the reconnection time if it is all ASCII digits; other fields are ignored;
* a blank line dispatches the event if at least one `data` field was seen, then
  clears the data and type buffers (but not the last event ID).

Input may be split anywhere, even inside a UTF-8 sequence: the decoder only ever
decodes whole lines, and the line terminators are ASCII bytes that never occur inside
a multi-byte sequence, so splitting cannot change the text. Invalid UTF-8 becomes
U+FFFD, as the spec's "UTF-8 decode" requires.

One deliberate deviation: the spec discards an event cut off by the end of the
stream. `finish()` dispatches it instead, if it has data. A proxy meets upstreams
that end with `data: [DONE]` and no blank line; a truly truncated event still fails
loudly, because its JSON does not parse.

Speed: this sits on the streaming hot path. `feed()` splits with `bytes.splitlines`
(which, on bytes, splits on exactly CR, LF and CRLF), tests the common `data: ` prefix
first, and decodes each event's data once at dispatch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from gate.dialects._shared import dumps_bytes
from gate.dialects.errors import MalformedUpstream

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "SSE_KEEPALIVE",
    "Event",
    "SSEDecoder",
    "SSEEvent",
    "encode_event",
    "sse_bytes",
]

#: A named stream event, as Anthropic and the Responses API send them: (event name,
#: data), the name repeating data["type"].
Event = tuple[str, dict[str, Any]]

#: 16 MiB: far above any chunk an engine streams, low enough that an upstream that never
#: ends a line or an event cannot make us buffer without bound.
DEFAULT_MAX_EVENT_SIZE: Final = 16 << 20
#: A comment line (which every SSE parser skips) and a blank line that dispatches nothing:
#: traffic on a silent stream that no client sees as an event.
SSE_KEEPALIVE: Final = b": keepalive\n\n"

_BOM: Final = b"\xef\xbb\xbf"
_NEWLINES: Final = (b"\n", b"\r")


class SSEEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event.

    `event` is None when the stream named no type (the spec's default, "message").
    `id` is the last event ID seen so far on the stream, which persists across events.
    (A msgspec Struct: seven times cheaper to build than a frozen dataclass, and this
    is built once per streamed token.)
    """

    event: str | None
    data: str
    id: str | None = None


class SSEDecoder:
    """Incremental event-stream decoder: `feed()` bytes as they arrive, `finish()` at EOF.

    An unterminated line or an undispatched event's data beyond `max_event_size` bytes
    raises MalformedUpstream: SSE only ever comes from upstream here.
    """

    __slots__ = (
        "_bom_checked",
        "_data",
        "_event",
        "_last_id",
        "_partial",
        "_partial_size",
        "_skip_lf",
        "max_event_size",
        "retry",
    )

    def __init__(self, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self.max_event_size = max_event_size
        self._reset()

    def _reset(self) -> None:
        self._partial: list[bytes] = []  # pieces of an unterminated line
        self._partial_size = 0
        self._bom_checked = False
        self._skip_lf = False  # the previous feed ended in CR: a leading LF belongs to it
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._last_id: str | None = None
        #: The reconnection time in milliseconds from the last valid `retry` field.
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume a piece of the stream; return the events it completed, in order."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:  # the LF of a CRLF split across feeds
                data = data[1:]
        if not self._bom_checked:
            data = b"".join([*self._partial, data])
            self._partial = []
            self._partial_size = 0
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._keep(data)  # could still be a BOM: wait for more
                return []
            self._bom_checked = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if b"\n" not in data and b"\r" not in data:
            # No line ends here: keep the piece, without copying what came before, so a
            # long line read in small pieces costs linear time, not quadratic.
            if data:
                self._keep(data)
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
        lines = data.splitlines(keepends=True)
        last = lines[-1]
        if last.endswith(_NEWLINES):
            self._skip_lf = last[-1] == 0x0D
        else:
            self._keep(lines.pop())
        events: list[SSEEvent] = []
        pending = self._data
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            # The common case inline: OpenAI and Anthropic put each payload on one line.
            if line.startswith(b"data: "):
                pending.append(line[6:])
            elif line:
                self._field(line)
            elif pending:
                events.append(self._dispatch())
                pending = self._data
            else:
                self._event = None
        if pending and sum(map(len, pending)) > self.max_event_size:
            raise MalformedUpstream(f"an SSE event exceeds {self.max_event_size} bytes")
        return events

    def _keep(self, piece: bytes) -> None:
        """Hold a piece of an unterminated line, within the size limit."""
        self._partial.append(piece)
        self._partial_size += len(piece)
        if self._partial_size > self.max_event_size:
            raise MalformedUpstream(f"an SSE line exceeds {self.max_event_size} bytes")

    def finish(self) -> list[SSEEvent]:
        """The stream ended: process an unterminated last line and dispatch a pending event.

        Dispatching the pending event is the one deviation from the spec (see the module
        docstring). The decoder is reset and may be reused for a new stream.
        """
        line = b"".join(self._partial)
        if line:
            self._field(line)
        events = [self._dispatch()] if self._data else []
        self._reset()
        return events

    def _dispatch(self) -> SSEEvent:
        """A blank line after data: the event. Clears data and type, not the last ID."""
        data = b"\n".join(self._data).decode("utf-8", "replace")
        event = self._event.decode("utf-8", "replace") if self._event else None
        self._data = []
        self._event = None
        return SSEEvent(event, data, self._last_id)

    def _field(self, line: bytes) -> None:
        """Any non-blank line: a comment or a field."""
        colon = line.find(b":")
        if colon == 0:
            return  # comment
        if colon < 0:
            field, value = line, b""
        else:
            field, value = line[:colon], line[colon + 1 :]
            if value.startswith(b" "):
                value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value
        elif field == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif field == b"retry" and value.isdigit():  # bytes.isdigit: ASCII digits, not empty
            self.retry = int(value)


def encode_event(data: str | bytes, event: str | None = None) -> bytes:
    """One event on the wire: an optional `event:` line, one `data:` line per line of
    `data`, and the blank line that dispatches it.

    Any of CRLF, CR and LF inside `data` starts a new `data:` line, so the decoder gives
    back `data` with its line endings normalized to LF.
    """
    payload = data.encode() if isinstance(data, str) else data
    if b"\n" in payload or b"\r" in payload:
        lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        body = b"".join([b"data: " + line + b"\n" for line in lines]) + b"\n"
    else:
        body = b"data: " + payload + b"\n\n"
    if event is None:
        return body
    if "\n" in event or "\r" in event:
        raise ValueError(f"an SSE event name cannot contain a line break: {event!r}")
    return b"event: " + event.encode() + b"\n" + body


def sse_bytes(events: Iterable[Event]) -> bytes:
    """Named events on the wire, `event: <name>\\ndata: <compact JSON>\\n\\n` each: the
    form of Anthropic's streams and of the Responses API's (compact JSON has no line
    break, so one `data:` line each). The hot path of both translated streams."""
    return b"".join(
        [
            b"event: " + name.encode() + b"\ndata: " + dumps_bytes(data) + b"\n\n"
            for name, data in events
        ]
    )
