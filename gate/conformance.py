"""The live conformance suite: checks a running node's wire behaviour over iroh.

spec/CONFORMANCE.md describes the offline tools (vectors, schema); this is the part
that needs a node to talk to, whatever it is written in. `gate conformance
NODE_ID@HOST:PORT` runs it.

Every check dials the node afresh from a throwaway key, which the node does not trust:
ALPN, preamble rejection (§3.1-§3.5), an untrusted handshake and an untrusted
http_proxy stream refused (§5.4). Given the key of a node it trusts (`identity`), the
suite also checks the trusted side: handshake accepted with capabilities, ping/pong,
capability_request, a handshake naming another node refused, an http_proxy exchange
(GET /v1/models), and an oversized frame refused (§3.4).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import trio

from gate.identity import NodeIdentity
from gate.protocol import (
    EOF,
    HTTP_PROXY,
    SUPPORTED_VERSIONS,
    Body,
    CapabilityRequest,
    CapabilityResponse,
    Channel,
    End,
    ErrorCode,
    FrameDecoder,
    Handshake,
    HandshakeResponse,
    NodeId,
    Ping,
    Pong,
    ProtocolError,
    RequestHead,
    ResponseHead,
    Role,
    StreamError,
    StreamType,
    encode_preamble,
)
from gate.services.p2p.service import ControlStream
from gate.services.transport.framed import receive_event
from gate.services.transport.quic import (
    ALPN,
    ConnectError,
    Connection,
    Endpoint,
    QuicStream,
    bind_endpoint,
)

__all__ = ["CheckResult", "run_suite"]

STEP_TIMEOUT: Final = 10.0
AGENT: Final = "gate-conformance"


@dataclass(frozen=True)
class CheckResult:
    name: str
    requirement: str  # the spec section it checks
    passed: bool | None  # None: not run (needs a trusted key)
    detail: str


class _Failed(Exception):
    pass


async def run_suite(
    node_id: NodeId,
    addresses: list[str],
    *,
    identity: NodeIdentity | None = None,
    host: str = "0.0.0.0",
) -> list[CheckResult]:
    """Run every check against the node; never raises for the node's misbehaviour
    (BindError when this machine cannot bind the suite's own endpoint)."""
    target = _Target(node_id, addresses)
    async with contextlib.AsyncExitStack() as endpoints:
        stranger = await _bound(endpoints, NodeIdentity.generate(), host)
        friend = await _bound(endpoints, identity, host) if identity is not None else None
        results = [await _run(stranger, target, check) for check in _UNTRUSTED]
        for check in _TRUSTED:
            if friend is None:
                results.append(CheckResult(check.name, check.requirement, None, "needs --identity"))
            else:
                results.append(await _run(friend, target, check))
        return results


async def _bound(stack: contextlib.AsyncExitStack, identity: NodeIdentity, host: str) -> Endpoint:
    """An endpoint for `identity`, closed (shielded) when `stack` unwinds."""
    endpoint = await bind_endpoint(identity.secret_key_bytes, host=host)
    stack.push_async_callback(_close_endpoint, endpoint)
    return endpoint


async def _close_endpoint(endpoint: Endpoint) -> None:
    with trio.CancelScope(shield=True):
        await endpoint.aclose()


@dataclass(frozen=True)
class _Target:
    node_id: NodeId
    addresses: list[str]


@dataclass(frozen=True)
class _Check:
    name: str
    requirement: str
    body: Callable[[Endpoint, _Target], Awaitable[str]]


async def _run(endpoint: Endpoint, target: _Target, check: _Check) -> CheckResult:
    try:
        with trio.fail_after(STEP_TIMEOUT * 2):
            detail = await check.body(endpoint, target)
    except _Failed as exc:
        return CheckResult(check.name, check.requirement, False, str(exc))
    except trio.TooSlowError:
        return CheckResult(check.name, check.requirement, False, "no answer in time")
    except Exception as exc:  # the node broke the connection, or a transport error
        return CheckResult(check.name, check.requirement, False, f"{type(exc).__name__}: {exc}")
    return CheckResult(check.name, check.requirement, True, detail)


async def _dial(endpoint: Endpoint, target: _Target, alpn: bytes = ALPN) -> Connection:
    with trio.fail_after(STEP_TIMEOUT):
        return await endpoint.connect(target.node_id, target.addresses, alpn=alpn)


# --- reading what the node sends ------------------------------------------------------


async def _first_frame(stream: QuicStream) -> bytes | None:
    """The first frame the node sends on `stream`, or None if it ends without one."""
    with trio.fail_after(STEP_TIMEOUT):
        try:
            frame = await receive_event(stream, FrameDecoder())
        except ProtocolError as exc:
            if exc.code != ErrorCode.TRUNCATED:
                raise
            return None  # it ended inside a frame: without one
    return frame if isinstance(frame, bytes) else None


def _bare_error(frame: bytes | None) -> tuple[int, str]:
    """(code, message) of a bare error object (§3.5), or _Failed."""
    if frame is None:
        raise _Failed("the stream ended without an error frame (§3.5 SHOULD send one)")
    try:
        value = msgspec.msgpack.decode(frame)
    except msgspec.DecodeError as exc:
        raise _Failed(f"the first frame is not msgpack: {exc}") from None
    if not (isinstance(value, dict) and value.get("type") == "error"):
        raise _Failed(f"the first frame is not an error object: {value!r:.120}")
    return int(value.get("code", -1)), str(value.get("message", ""))


async def _rejected_with(raw: bytes, endpoint: Endpoint, target: _Target, code: int) -> str:
    conn = await _dial(endpoint, target)
    try:
        stream = await conn.open_stream()
        await stream.send_all(raw)
        got, message = _bare_error(await _first_frame(stream))
        if got != code:
            raise _Failed(f"error code {got} ({message!r}); expected {code}")
        await stream.aclose()
        return f"error {got}: {message}"
    finally:
        conn.close()


# --- checks with an untrusted key -----------------------------------------------------


async def _alpn_accepted(endpoint: Endpoint, target: _Target) -> str:
    conn = await _dial(endpoint, target)
    conn.close()
    return f"connected with ALPN {ALPN.decode()}"


async def _other_alpn_refused(endpoint: Endpoint, target: _Target) -> str:
    try:
        conn = await _dial(endpoint, target, alpn=b"gate/conformance-unknown")
    except ConnectError as exc:
        return f"refused: {exc}"
    conn.close()
    raise _Failed("the node accepted a connection with an unknown ALPN")


async def _bad_magic(endpoint: Endpoint, target: _Target) -> str:
    return await _rejected_with(b"HTTP/1.1", endpoint, target, ErrorCode.MALFORMED_PREAMBLE)


async def _bad_version(endpoint: Endpoint, target: _Target) -> str:
    unsupported = max(SUPPORTED_VERSIONS) + 1
    raw = encode_preamble(StreamType.NODE_CONTROL, version=unsupported)
    return await _rejected_with(raw, endpoint, target, ErrorCode.UNSUPPORTED_VERSION)


async def _bad_stream_type(endpoint: Endpoint, target: _Target) -> str:
    raw = b"GATE" + bytes([max(SUPPORTED_VERSIONS), 0, 200, 0])
    return await _rejected_with(raw, endpoint, target, ErrorCode.UNKNOWN_STREAM_TYPE)


async def _untrusted_handshake_refused(endpoint: Endpoint, target: _Target) -> str:
    answer = await _handshake(endpoint, target, claim=None)
    if answer.accepted:
        raise _Failed("the node accepted a handshake from a key it cannot trust")
    if not answer.reason:
        raise _Failed("refused without a reason (§5.4 SHOULD give one)")
    return f"refused: {answer.reason}"


async def _untrusted_request_refused(endpoint: Endpoint, target: _Target) -> str:
    request = _models_request(Channel(HTTP_PROXY, Role.INITIATOR))
    raw = encode_preamble(StreamType.HTTP_PROXY) + request
    return await _rejected_with(raw, endpoint, target, ErrorCode.UNAUTHORIZED)


# --- checks with a trusted key --------------------------------------------------------


async def _handshake(endpoint: Endpoint, target: _Target, claim: str | None) -> HandshakeResponse:
    """Open node_control, send a handshake (claiming `claim` as our id if given)."""
    conn = await _dial(endpoint, target)
    try:
        control, answer = await _open_control(conn, endpoint, claim)
        await control.stream.aclose()
        return answer
    finally:
        conn.close()


async def _open_control(
    conn: Connection, endpoint: Endpoint, claim: str | None = None
) -> tuple[ControlStream, HandshakeResponse]:
    stream = await conn.open_stream()
    await stream.send_all(encode_preamble(StreamType.NODE_CONTROL))
    control = ControlStream(stream, Role.INITIATOR)
    hello = Handshake(
        node_id=claim or str(endpoint.node_id), versions=list(SUPPORTED_VERSIONS), agent=AGENT
    )
    await control.send(hello)
    with trio.fail_after(STEP_TIMEOUT):
        answer = await control.receive()
    if answer is None or not isinstance(answer.payload, HandshakeResponse):
        raise _Failed(f"expected handshake_response, got {answer!r:.120}")
    return control, answer.payload


async def _handshake_accepted(endpoint: Endpoint, target: _Target) -> str:
    conn = await _dial(endpoint, target)
    try:
        control, answer = await _open_control(conn, endpoint)
        if not answer.accepted:
            raise _Failed(f"refused: {answer.reason} (does the node trust {endpoint.node_id}?)")
        if answer.node_id != str(target.node_id):
            raise _Failed(f"the answer names {answer.node_id}, not the node dialled")
        if answer.version not in SUPPORTED_VERSIONS:
            raise _Failed(f"negotiated version {answer.version}, not one we offered")
        caps = answer.capabilities
        if caps is not None and caps.node_id != str(target.node_id):
            raise _Failed("its capabilities name another node")
        models = len(caps.supported_models) if caps else 0
        await _ping_pong(control)
        await _capabilities(control, target)
        return f"version {answer.version}, {models} model(s); ping/pong and capabilities ok"
    finally:
        conn.close()


async def _ping_pong(control: ControlStream) -> None:
    nonce = 0x5EED
    await control.send(Ping(nonce=nonce))
    while True:
        with trio.fail_after(STEP_TIMEOUT):
            message = await control.receive()
        if message is None:
            raise _Failed("the node closed node_control instead of answering ping (§5.5)")
        if isinstance(message.payload, Pong):
            if message.payload.nonce != nonce:
                raise _Failed(f"pong carries nonce {message.payload.nonce}, not {nonce}")
            return


async def _capabilities(control: ControlStream, target: _Target) -> None:
    await control.send(CapabilityRequest())
    while True:
        with trio.fail_after(STEP_TIMEOUT):
            message = await control.receive()
        if message is None:
            raise _Failed("the node closed node_control instead of capability_response")
        if isinstance(message.payload, CapabilityResponse):
            if message.payload.capabilities.node_id != str(target.node_id):
                raise _Failed("capability_response names another node")
            return


async def _impostor_refused(endpoint: Endpoint, target: _Target) -> str:
    other = str(NodeId(NodeIdentity.generate().public_key_bytes))
    answer = await _handshake(endpoint, target, claim=other)
    if answer.accepted:
        raise _Failed("accepted a handshake whose node_id is not the connection's key")
    return f"refused: {answer.reason}"


async def _http_exchange(endpoint: Endpoint, target: _Target) -> str:
    conn = await _dial(endpoint, target)
    try:
        stream = await conn.open_stream()
        channel = Channel(HTTP_PROXY, Role.INITIATOR)
        await stream.send_all(encode_preamble(StreamType.HTTP_PROXY) + _models_request(channel))
        head, body = await _read_response(stream, channel)
        if head.status != 200:
            raise _Failed(f"GET /v1/models answered {head.status}")
        try:
            listing = json.loads(body)
        except ValueError:
            raise _Failed(f"the body is not JSON: {body[:80]!r}") from None
        if not isinstance(listing.get("data"), list):
            raise _Failed("the body has no data list")
        await stream.aclose()
        return f"200 with {len(listing['data'])} model(s), end and all"
    finally:
        conn.close()


async def _read_response(stream: QuicStream, channel: Channel[Any]) -> tuple[ResponseHead, bytes]:
    head: ResponseHead | None = None
    body = b""
    with trio.fail_after(STEP_TIMEOUT):
        while True:
            event = await receive_event(stream, channel)
            if event is EOF:
                raise _Failed("the stream ended before end (§7.3)")
            if isinstance(event, ResponseHead):
                head = event
            elif isinstance(event, Body):
                body += event.data
            elif isinstance(event, End):
                assert head is not None  # the channel allows end only after the head
                return head, body
            elif isinstance(event, StreamError):
                raise _Failed(f"error {event.code}: {event.message}")


async def _oversized_frame(endpoint: Endpoint, target: _Target) -> str:
    # A length prefix past the 1 MiB maximum: the node must refuse before reading it.
    raw = encode_preamble(StreamType.HTTP_PROXY) + (0x7FFF_FFFF).to_bytes(4, "big")
    return await _rejected_with(raw, endpoint, target, ErrorCode.FRAME_TOO_LARGE)


def _models_request(channel: Channel[Any]) -> bytes:
    return channel.send(RequestHead(method="GET", target="/v1/models", headers=[])) + channel.send(
        End()
    )


_UNTRUSTED: Final = (
    _Check("connects with ALPN gate/1", "§2.2", _alpn_accepted),
    _Check("refuses another ALPN", "§2.2", _other_alpn_refused),
    _Check("refuses a bad preamble magic", "§3.1, §3.5", _bad_magic),
    _Check("refuses an unsupported version", "§3.2, §3.5", _bad_version),
    _Check("refuses an unknown stream type", "§3.3, §3.5", _bad_stream_type),
    _Check("refuses an untrusted handshake, with a reason", "§5.4", _untrusted_handshake_refused),
    _Check("refuses an untrusted http_proxy stream", "§5.4, §3.5", _untrusted_request_refused),
)
_TRUSTED: Final = (
    _Check("accepts a trusted handshake; ping, capabilities", "§5.3-§5.5", _handshake_accepted),
    _Check("refuses a handshake naming another node", "§5.4", _impostor_refused),
    _Check("serves an http_proxy exchange", "§7", _http_exchange),
    _Check("refuses a frame over 1 MiB", "§3.4", _oversized_frame),
)
