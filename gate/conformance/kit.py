"""The in-process kit: the sans-IO rules of spec/protocol.md as functions that a third
party's pytest suite calls with factories for its own implementation, the way
trio.testing.check_two_way_stream takes stream makers. No network, no event loop.

The implementation is reached through small adapters (the Protocols below), so any
shape of API fits: an adapter is a few lines around one's own reader, decoder or state
machine. Errors are recognized by an integer `code` attribute (§9): any exception that
carries one. Each check collects every violation and fails once, listing them all.

    from gate.conformance import kit

    def test_my_channels():
        kit.check_preamble_reader(MyPreambleAdapter)
        kit.check_frame_decoder(MyFrameAdapter)
        kit.check_channel("http_proxy", lambda role: MyChannelAdapter("http_proxy", role))

The state tables here are transcribed from the spec's text (§5.2, §6.2, §7.2), not
taken from Gate's code, so running the kit against gate.protocol (Gate's own unit
tests do) checks that code against the spec.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

import msgspec

__all__ = [
    "ChannelEnd",
    "FrameReader",
    "PreambleFeed",
    "check_channel",
    "check_frame_decoder",
    "check_preamble_reader",
]

MIB: Final = 1 << 20
INIT, RESP = "initiator", "responder"


class PreambleFeed(Protocol):
    """A fresh preamble reader: `feed(data)` returns (major version, stream type code)
    once 8 bytes are in, else None; `feed(b"")` means the stream ended."""

    def feed(self, data: bytes) -> tuple[int, int] | None: ...


class FrameReader(Protocol):
    """A fresh frame decoder with the 1 MiB maximum: `feed(data)` returns the payloads
    completed by `data`; `feed(b"")` means the stream ended."""

    def feed(self, data: bytes) -> list[bytes]: ...


class ChannelEnd(Protocol):
    """One end of a framed stream (the role given to the factory), from its first frame
    on. Each call raises an exception with a `code` when the spec forbids it."""

    def receive(self, payload: bytes) -> None: ...  # one frame's payload from the peer
    def send(self, payload: bytes) -> None: ...  # a payload we are about to send
    def receive_finish(self) -> None: ...  # the peer finished its sending half
    def finish(self) -> None: ...  # we finish our sending half


class _Violations:
    def __init__(self, what: str) -> None:
        self.what = what
        self.found: list[str] = []

    def __call__(self, line: str) -> None:
        self.found.append(line)

    def done(self) -> None:
        if self.found:
            shown = "\n  ".join(self.found[:40])
            more = f"\n  ... and {len(self.found) - 40} more" if len(self.found) > 40 else ""
            raise AssertionError(f"{self.what}: {len(self.found)} violation(s)\n  {shown}{more}")


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return int(code) if isinstance(code, int) else None


def _raises(call: Callable[[], Any]) -> tuple[bool, int | None, Any]:
    try:
        value = call()
    except Exception as exc:
        return True, _code(exc), None
    return False, None, value


# --- §3.1-§3.3 ------------------------------------------------------------------------


def check_preamble_reader(make: Callable[[], PreambleFeed]) -> None:
    """§3.1-§3.3: magic checked byte by byte, truncation, versions, stream types."""
    bad = _Violations("preamble reader")

    def feed_bytes(data: bytes, end: bool = False) -> tuple[int | None, int | None, Any]:
        """(index of the byte that raised, its code, the result)."""
        reader = make()
        result = None
        for i in range(len(data)):
            raised, code, result = _raises(functools.partial(reader.feed, data[i : i + 1]))
            if raised:
                return i, code, None
        if end:
            raised, code, _ = _raises(functools.partial(reader.feed, b""))
            if raised:
                return len(data), code, None
        return None, None, result

    for wrong in (b"HTTP/1.1", b"\x16\x03\x01\x02\x00\x01\x00\x01", b"gATE\x01\x00\x01\x00"):
        at, code, _ = feed_bytes(wrong)
        if (at, code) != (0, 100):
            bad(f"{wrong.hex(' ')}: expected 100 at byte 0, got {code} at byte {at}")
    at, code, _ = feed_bytes(b"GATX\x01\x00\x01\x00")
    if (at, code) != (3, 100):
        bad(f"GATX: expected 100 at byte 3 (the first that disagrees), got {code} at {at}")
    for n in range(8):
        at, code, _ = feed_bytes(b"GATE\x01\x00\x03\x00"[:n], end=True)
        if code != 105:
            bad(f"a stream that ends after {n} preamble bytes: expected 105, got {code}")
    for version in (0, 2, 255):
        at, code, _ = feed_bytes(b"GATE" + bytes((version, 0, 1, 0)))
        if code != 101:
            bad(f"version {version}: expected 101, got {code}")
    for kind in (0, 5, 200, 255):
        at, code, _ = feed_bytes(b"GATE" + bytes((1, 0, kind, 0)))
        if code != 102:
            bad(f"stream type {kind}: expected 102, got {code}")
    for kind in (1, 2, 3, 4):
        at, code, result = feed_bytes(b"GATE" + bytes((1, 7, kind, 0xFF)))
        if at is not None or result is None or tuple(result) != (1, kind):
            bad(f"type {kind} with minor 7, reserved ff: expected (1, {kind}), got {result}")
    bad.done()


# --- §3.4 -----------------------------------------------------------------------------


def check_frame_decoder(make: Callable[[], FrameReader]) -> None:
    """§3.4: the maximum from the header alone, every frame up to 1 MiB, any split,
    zero-length frames, and the end of a stream inside a frame."""
    bad = _Violations("frame decoder")
    frames = [b"a", b"", b"xyz", bytes(range(256)) * 3]
    stream = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    for at in range(1, len(stream)):  # b"" would mean the end of the stream
        reader = make()
        raised, code, first = _raises(functools.partial(reader.feed, stream[:at]))
        raised2, code2, second = _raises(functools.partial(reader.feed, stream[at:]))
        if raised or raised2 or list(first) + list(second) != frames:
            bad(f"split at byte {at}: got {first}/{second}, errors {code}/{code2}")
    reader = make()
    got: list[bytes] = []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
    if got != frames:
        bad("fed one byte at a time: frames differ")
    raised, code, _ = _raises(lambda: make().feed((MIB + 1).to_bytes(4, "big")))
    if code != 103:
        bad(f"a header of 1 MiB + 1 alone: expected 103 at once, got {code}")
    largest = MIB.to_bytes(4, "big") + b"\0" * MIB
    raised, code, out = _raises(lambda: make().feed(largest))
    if raised or out is None or [len(f) for f in out] != [MIB]:
        bad(f"a frame of exactly 1 MiB: expected accepted, got error {code}")
    for cut, where in ((2, "header"), (6, "payload")):
        reader = make()
        reader.feed(stream[:cut])
        raised, code, _ = _raises(functools.partial(reader.feed, b""))
        if code != 105:
            bad(f"a stream that ends inside a frame {where}: expected 105, got {code}")
    raised, code, out = _raises(lambda: make().feed(b""))
    if raised:
        bad(f"an empty stream: expected no frames and no error, got {code}")
    bad.done()


# --- §5.2, §6.2, §7.2: the state tables, as the spec writes them -------------------------

_NODE_ESTABLISHED = ("ping", "pong", "capability_request", "capability_response")
NODE_TABLE: Final = {
    ("await_handshake", INIT, "handshake"): "await_response",
    ("await_handshake", INIT, "error"): "closed",
    ("await_handshake", RESP, "error"): "closed",
    ("await_response", RESP, "handshake_accepted"): "established",
    ("await_response", RESP, "handshake_refused"): "closed",
    ("await_response", INIT, "error"): "closed",
    ("await_response", RESP, "error"): "closed",
    **{("established", s, e): "established" for s in (INIT, RESP) for e in _NODE_ESTABLISHED},
    ("established", INIT, "error"): "closed",
    ("established", RESP, "error"): "closed",
}
_RELAY_WAIT = {
    "domain_request": ("await_domain", "domain_response"),
    "dns_challenge": ("await_dns", "dns_challenge_response"),
    "activate_domain": ("await_activation", "activation_response"),
}
RELAY_TABLE: Final = {
    **{("idle", INIT, req): wait for req, (wait, _) in _RELAY_WAIT.items()},
    **{(wait, RESP, answer): "idle" for wait, answer in _RELAY_WAIT.values()},
    **{(wait, RESP, "error"): "idle" for wait, _ in _RELAY_WAIT.values()},
    **{(wait, INIT, "error"): "closed" for wait, _ in _RELAY_WAIT.values()},
    ("idle", INIT, "error"): "closed",
    ("idle", RESP, "error"): "closed",
}
HTTP_TABLE: Final = {  # the reachable rows of §7.2, verbatim
    (("head", "head"), INIT, "request_head"): ("body", "head"),
    (("head", "head"), INIT, "error"): ("failed", "failed"),
    (("head", "head"), RESP, "error"): ("failed", "failed"),
    (("body", "head"), INIT, "body"): ("body", "head"),
    (("body", "head"), INIT, "end"): ("done", "head"),
    (("body", "head"), RESP, "response_head"): ("body", "body"),
    (("body", "head"), INIT, "error"): ("failed", "failed"),
    (("body", "head"), RESP, "error"): ("failed", "failed"),
    (("body", "body"), INIT, "body"): ("body", "body"),
    (("body", "body"), INIT, "end"): ("done", "body"),
    (("body", "body"), RESP, "body"): ("body", "body"),
    (("body", "body"), RESP, "end"): ("body", "done"),
    (("body", "body"), INIT, "error"): ("failed", "failed"),
    (("body", "body"), RESP, "error"): ("failed", "failed"),
    (("body", "done"), INIT, "body"): ("body", "done"),
    (("body", "done"), INIT, "end"): ("done", "done"),
    (("done", "head"), RESP, "response_head"): ("done", "body"),
    (("done", "head"), INIT, "error"): ("failed", "failed"),
    (("done", "head"), RESP, "error"): ("failed", "failed"),
    (("done", "body"), RESP, "body"): ("done", "body"),
    (("done", "body"), RESP, "end"): ("done", "done"),
    (("done", "body"), INIT, "error"): ("failed", "failed"),
    (("done", "body"), RESP, "error"): ("failed", "failed"),
}


def _node_finish(state: Any, role: str) -> bool:
    return state in ("established", "closed")


def _relay_finish(state: Any, role: str) -> bool:
    return state in ("idle", "closed")


def _http_finish(state: Any, role: str) -> bool:
    request, response = state
    if state == ("failed", "failed"):
        return True
    return bool(request == "done" if role == INIT else response == "done")


_NODE_ID = "a" * 52
_ENVELOPED = {"node_control", "relay_control"}
_PAYLOADS: Final[dict[str, dict[str, Any]]] = {
    "handshake": {"type": "handshake", "node_id": _NODE_ID, "versions": [1]},
    "handshake_accepted": {
        "type": "handshake_response",
        "node_id": _NODE_ID,
        "accepted": True,
        "version": 1,
    },
    "handshake_refused": {
        "type": "handshake_response",
        "node_id": _NODE_ID,
        "accepted": False,
        "reason": "no",
    },
    "ping": {"type": "ping", "nonce": 1},
    "pong": {"type": "pong", "nonce": 1},
    "capability_request": {"type": "capability_request"},
    "capability_response": {"type": "capability_response", "capabilities": {"node_id": _NODE_ID}},
    "domain_request": {"type": "domain_request", "node_id": _NODE_ID},
    "domain_response": {"type": "domain_response", "domain": f"{_NODE_ID}.relay.test"},
    "dns_challenge": {
        "type": "dns_challenge",
        "domain": f"_acme-challenge.{_NODE_ID}.relay.test",
        "txt_value": "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",  # 43 base64url (§6.1)
    },
    "dns_challenge_response": {"type": "dns_challenge_response", "ok": True},
    "activate_domain": {"type": "activate_domain", "domain": f"{_NODE_ID}.relay.test"},
    "activation_response": {"type": "activation_response", "ok": True},
    "error": {"type": "error", "code": 500, "message": "kit"},
    "request_head": {"type": "request_head", "method": "GET", "target": "/"},
    "response_head": {"type": "response_head", "status": 200},
    "body": {"type": "body", "data": b"x"},
    "end": {"type": "end"},
}
Table = dict[tuple[Any, str, str], Any]
CHANNELS: Final[dict[str, tuple[Table, Any, Callable[[Any, str], bool]]]] = {
    "node_control": (NODE_TABLE, "await_handshake", _node_finish),
    "relay_control": (RELAY_TABLE, "idle", _relay_finish),
    "http_proxy": (HTTP_TABLE, ("head", "head"), _http_finish),
}
_TERMINAL = {"closed", ("done", "done"), ("failed", "failed")}


def payload(channel: str, event: str) -> bytes:
    """The msgpack payload of `event` on `channel` (an envelope for the control channels)."""
    body = _PAYLOADS[event]
    if channel in _ENVELOPED:
        return msgspec.msgpack.encode({"version": 1, "id": 1, "timestamp": 0, "payload": body})
    return msgspec.msgpack.encode(body)


def _paths(table: dict[Any, Any], initial: Any) -> Iterator[tuple[Any, list[tuple[str, str]]]]:
    """Every state reachable from `initial`, with one shortest path to it."""
    seen: dict[Any, list[tuple[str, str]]] = {initial: []}
    queue = [initial]
    while queue:
        state = queue.pop(0)
        yield state, seen[state]
        for (src, sender, event), dst in table.items():
            if src == state and dst not in seen:
                seen[dst] = [*seen[state], (sender, event)]
                queue.append(dst)


def check_channel(channel: str, make: Callable[[str], ChannelEnd]) -> None:
    """§4.3, §5.2/§6.2/§7.2: from every reachable state, as either end, every event of
    the channel is accepted exactly when the table lists it (UNEXPECTED_MESSAGE, 201,
    otherwise, received or about to be sent), and finishing is accepted exactly where
    `may_finish` lists it (a peer's early finish is TRUNCATED, 105)."""
    table, initial, may_finish = CHANNELS[channel]
    events = sorted({e for (_, _, e) in table} - {"handshake_accepted", "handshake_refused"})
    if channel == "node_control":
        events += ["handshake_accepted", "handshake_refused"]
    bad = _Violations(f"{channel} channel")
    for state, path in _paths(table, initial):
        for me, sender in itertools.product((INIT, RESP), (INIT, RESP)):
            # §4.3 SHOULD: after one's own `error` a side discards what still arrives.
            own_error = bool(path) and path[-1] == (me, "error")
            if state in _TERMINAL and (own_error or sender != me):
                continue
            for event in events:
                end = _replay(channel, make, me, path, bad)
                if end is None:
                    break
                allowed = (state, sender, event) in table
                frame = payload(channel, event)
                raised, code, _ = _raises(
                    functools.partial(end.send if sender == me else end.receive, frame)
                )
                where = f"in {state} as {me}: {sender} {event}"
                _judge(bad, where, "the table", allowed, raised, code, sender != me, 201)
            end = _replay(channel, make, me, path, bad)
            if end is None or own_error:
                continue
            allowed = may_finish(state, sender)
            raised, code, _ = _raises(end.finish if sender == me else end.receive_finish)
            where = f"in {state} as {me}: {sender} finishes"
            _judge(bad, where, "may_finish", allowed, raised, code, sender != me, 105)
    bad.done()


def _judge(
    bad: _Violations,
    where: str,
    rule: str,
    allowed: bool,
    raised: bool,
    code: int | None,
    by_peer: bool,
    refusal: int,
) -> None:
    """One step checked against its `rule`: accepted exactly when the rule allows it,
    and a peer's step the rule does not allow refused with `refusal` (UNEXPECTED_MESSAGE
    for an event, TRUNCATED for a finish)."""
    if allowed and raised:
        bad(f"{where} is in {rule}, but was refused ({code})")
    elif not allowed and not raised:
        bad(f"{where} is not in {rule}, but was accepted")
    elif not allowed and by_peer and code != refusal:
        bad(f"{where}: expected {refusal}, got {code}")


def _replay(
    channel: str,
    make: Callable[[str], ChannelEnd],
    me: str,
    path: list[tuple[str, str]],
    bad: _Violations,
) -> ChannelEnd | None:
    end = make(me)
    for sender, event in path:
        frame = payload(channel, event)
        raised, code, _ = _raises(
            functools.partial(end.send if sender == me else end.receive, frame)
        )
        if raised:
            bad(f"as {me}, the path {path} was refused at {sender} {event} ({code})")
            return None
    return end
