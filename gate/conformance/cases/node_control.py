"""Cases for §3.2 (version negotiation), §4.3 and §5 (NodeControl: the state table, the
handshake and its checks, heartbeat, capabilities) against a node.

Three tables: a stranger's first message (first_stream), a message on an established
channel (`_established`), and a stream opened after a refused handshake
(`_after_refusal`); the cases of their own shape follow them."""

from __future__ import annotations

import re

import trio

from gate.conformance.cases.first_message import QUIET, first_stream
from gate.conformance.http_client import end, head
from gate.conformance.node_session import ControlSession, handshake_frame, open_control
from gate.conformance.probe import Ended, Probe, error_code, expect_error
from gate.conformance.registry import CaseFailed, Level, Row, case, table
from gate.conformance.wire import (
    HTTP_PROXY,
    NODE_CONTROL,
    envelope,
    frame,
    node_frame,
    other_node_id,
    preamble,
)
from gate.protocol import ErrorCode

UNEXPECTED = ErrorCode.UNEXPECTED_MESSAGE
_NOT_IN_TABLE = (
    "A message whose (state, sender, event) is not in the table MUST be treated as "
    "UNEXPECTED_MESSAGE"
)
_NOT_IN_TABLE_RECEIVED = (
    "A message whose (state, sender, event) is not in the table MUST be treated as "
    "UNEXPECTED_MESSAGE, whether received (RemoteProtocolError)"
)
_PING_QUOTE = "A node that receives `ping` MUST answer with `pong` carrying the same `nonce`"


def _friend(probe: Probe) -> str:
    return str(probe.friend.node_id)


# --- a stranger's first message on node_control (§5.2, §5.1): `send` is the frames after
# the preamble (a function of the probe), `expect` the error, or QUIET -----------------------

table(
    [
        Row(
            "node/5.2/1",
            "ping before the handshake: UNEXPECTED_MESSAGE",
            _NOT_IN_TABLE_RECEIVED,
            send=lambda _, __: node_frame("ping", nonce=1),
            expect=UNEXPECTED,
        ),
        Row(
            "node/5.2/2",
            "pong before the handshake: UNEXPECTED_MESSAGE",
            _NOT_IN_TABLE_RECEIVED,
            send=lambda _, __: node_frame("pong", nonce=1),
            expect=UNEXPECTED,
        ),
        Row(
            "node/5.2/3",
            "capability_request before the handshake: UNEXPECTED_MESSAGE",
            _NOT_IN_TABLE_RECEIVED,
            send=lambda _, __: node_frame("capability_request"),
            expect=UNEXPECTED,
        ),
        Row(
            "node/5.2/4",
            "capability_response before the handshake: UNEXPECTED_MESSAGE",
            _NOT_IN_TABLE_RECEIVED,
            send=lambda probe, _: node_frame(
                "capability_response", capabilities={"node_id": probe.own_id}
            ),
            expect=UNEXPECTED,
        ),
        Row(
            "node/5.2/5",
            "a handshake_response from the initiator: UNEXPECTED_MESSAGE",
            "A valid message that the channel's table does not allow in the current state from "
            "its sender MUST be treated as UNEXPECTED_MESSAGE",
            send=lambda probe, _: node_frame(
                "handshake_response", node_id=probe.own_id, accepted=True, version=1
            ),
            expect=UNEXPECTED,
        ),
        Row(
            "node/5.2/9",
            "an error before the handshake closes the channel without an answer",
            "await_handshake | initiator | error | closed",
            send=lambda _, __: node_frame("error", code=500),
            finish=True,
            expect=QUIET,
        ),
        Row(
            "node/5.1/3",
            "a handshake offering no versions at all: INVALID_MESSAGE",
            "a `handshake` with an empty `versions` list",
            send=lambda probe, _: handshake_frame(probe.own_id, versions=[]),
            expect=ErrorCode.INVALID_MESSAGE,
        ),
    ],
    first_stream,
)


# --- a message on an established channel (trusted): `send` is frames (a function of the
# probe), `expect` the channel's error code, or the nonces of the pongs that answer -----------


async def _established(probe: Probe, row: Row) -> str:
    session = await open_control(probe)
    await session.wire.send(row.send(probe))
    if isinstance(row.expect, int):
        return await session.error(row.expect)
    got = [(await session.expect("pong")).get("nonce") for _ in row.expect]
    if got != row.expect:
        raise CaseFailed(f"pong nonces {got}, expected {row.expect}", probe.evidence)
    return f"pong nonces {got}"


table(
    [
        Row(
            "node/5.2/6",
            "a second handshake on an established channel: UNEXPECTED_MESSAGE",
            _NOT_IN_TABLE,
            send=lambda probe: handshake_frame(_friend(probe)),
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/5.2/7",
            "a handshake_response from the initiator once established: UNEXPECTED_MESSAGE",
            _NOT_IN_TABLE,
            send=lambda probe: node_frame(
                "handshake_response", node_id=_friend(probe), accepted=True, version=1
            ),
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/5.2/10",
            "a refused handshake_response from the initiator once established: UNEXPECTED_MESSAGE",
            _NOT_IN_TABLE,
            send=lambda probe: node_frame(
                "handshake_response", node_id=_friend(probe), accepted=False, reason="no"
            ),
            expect=UNEXPECTED,
            trusted=True,
        ),
        Row(
            "node/5.2/8",
            "an unsolicited pong is not an error; the channel goes on",
            "it MUST NOT treat one as an error.",
            send=lambda _: node_frame("pong", nonce=424242) + node_frame("ping", nonce=7),
            expect=[7],
            trusted=True,
        ),
        Row(
            "node/5.5/1",
            "answers ping with pong carrying the same nonce",
            _PING_QUOTE,
            send=lambda _: node_frame("ping", nonce=0x5EED),
            expect=[0x5EED],
            trusted=True,
        ),
        Row(
            "node/5.5/2",
            "echoes the largest nonce, 2^63-1",
            _PING_QUOTE,
            send=lambda _: node_frame("ping", nonce=2**63 - 1),
            expect=[2**63 - 1],
            trusted=True,
        ),
        Row(
            "node/5.5/3",
            "answers three pings sent in one write, in order",
            _PING_QUOTE,
            send=lambda _: b"".join(node_frame("ping", nonce=n) for n in (11, 12, 13)),
            expect=[11, 12, 13],
            trusted=True,
        ),
        Row(
            "node/5.1/4",
            "answers a ping whose reply_to matches nothing",
            "A receiver MUST NOT require it, nor reject a message for a `reply_to` it cannot "
            "match.",
            send=lambda _: frame(envelope({"type": "ping", "nonce": 8}, reply_to=2**62)),
            expect=[8],
            trusted=True,
        ),
        Row(
            "node/5.5/7",
            "takes an unasked capability_response (a refresh) and goes on answering",
            "A node MAY also send `capability_response` unasked when its capabilities change",
            send=lambda probe: (
                node_frame(
                    "capability_response",
                    capabilities={"node_id": _friend(probe), "load_factor": 0.5},
                )
                + node_frame("ping", nonce=77)
            ),
            expect=[77],
            trusted=True,
        ),
    ],
    _established,
)


# --- after a refused handshake (§5.4): a trusted key's connection whose handshake names
# another node; `send` opens another stream on it, which the node must not serve: the
# connection closes, the stream ends, or `expect` is its error ------------------------------


async def _after_refusal(probe: Probe, row: Row) -> str:
    session = await open_control(probe, node_id=other_node_id(), accepted=False)
    assert session.conn is not None
    what, first = row.send(probe)
    try:
        wire = await probe.open(session.conn, first, what)
        value = await wire.value()
    except Exception as exc:  # the connection closed: nothing was served
        return f"refused, then the connection closed ({type(exc).__name__})"
    if isinstance(value, Ended):
        return f"refused, then the {what} stream {value}"
    if error_code(value) != row.expect:
        raise CaseFailed(f"the {what} stream after the refusal got {value!r:.200}", probe.evidence)
    return f"refused, then the {what} stream was rejected with {int(row.expect)}"


table(
    [
        Row(
            "node/5.4/4",
            "after refusing a handshake, serves no http_proxy stream on that connection",
            "MUST NOT serve any on a connection where it refused that peer's handshake.",
            send=lambda _: ("http_proxy", preamble(HTTP_PROXY) + head() + end()),
            expect=ErrorCode.UNAUTHORIZED,
            trusted=True,
        ),
        Row(
            "node/5.4/6",
            "after refusing a handshake, processes no other node_control stream on that connection",
            "After refusing, the responder MUST NOT process any other stream from that peer on "
            "the connection",
            send=lambda probe: (
                "node_control",
                preamble(NODE_CONTROL) + handshake_frame(_friend(probe)),
            ),
            expect=ErrorCode.UNAUTHORIZED,
            trusted=True,
        ),
    ],
    _after_refusal,
)


# --- the cases of their own shape -------------------------------------------------------------


@case(
    "node/4.3/2",
    "finishing an established channel is allowed: the node ends cleanly, no TRUNCATED",
    "`may_finish`: either role in `established` or `closed`.",
    trusted=True,
)
async def finish_established(probe: Probe) -> str:
    session = await open_control(probe)
    await session.wire.finish()
    # The node may finish too, or keep its half open while it uses the connection
    # (§5.5); what it must not do is call the finish TRUNCATED.
    with trio.move_on_after(3):
        while True:
            message = await session.next()
            if isinstance(message, Ended):
                return f"the stream {message}"
            payload = message["payload"]
            if payload.get("type") == "error":
                raise CaseFailed(f"answered a finish with {payload!r:.200}", probe.evidence)
    return "no error within 3 s"


# --- the handshake (§5.4, §3.2) --------------------------------------------------------


@case(
    "node/5.4/1",
    "refuses a stranger's handshake, with a reason and its own NodeId",
    "If either check fails, or no version is shared (§3.2), it MUST reply `accepted = false` "
    "with a human-readable `reason`.",
)
async def stranger_refused(probe: Probe) -> str:
    answer = (await open_control(probe, trusted=False, accepted=False)).answer
    if not answer.get("reason"):
        raise CaseFailed("refused without a reason", probe.evidence)
    if answer.get("node_id") != str(probe.target.node_id):
        raise CaseFailed(f"the refusal names {answer.get('node_id')}", probe.evidence)
    return f"refused: {answer['reason']}"


@case(
    "node/5.4/2",
    "refuses a handshake whose node_id is not the connection's key",
    "The responder MUST check that `Handshake.node_id` equals the NodeId the transport "
    "authenticated for the connection",
    trusted=True,
)
async def impostor(probe: Probe) -> str:
    answer = (await open_control(probe, node_id=other_node_id(), accepted=False)).answer
    return f"refused: {answer.get('reason')}"


@case(
    "node/5.4/3",
    "accepts a trusted handshake with version 1 and its own NodeId",
    "An accepting response MUST carry `version` (§3.2)",
    trusted=True,
)
async def accepted(probe: Probe) -> str:
    answer = (await open_control(probe)).answer
    if answer.get("version") != 1:
        raise CaseFailed(f"accepted with version {answer.get('version')}", probe.evidence)
    if answer.get("node_id") != str(probe.target.node_id):
        raise CaseFailed(f"the answer names {answer.get('node_id')}", probe.evidence)
    return "accepted, version 1"


@case(
    "node/5.4/5",
    "refuses an http_proxy stream from a stranger with UNAUTHORIZED",
    "A node MUST NOT serve an http_proxy stream from a peer it does not trust",
)
async def stranger_request(probe: Probe) -> str:
    wire = await probe.stream(preamble(HTTP_PROXY) + head() + end(), label="http_proxy")
    return await expect_error(wire, ErrorCode.UNAUTHORIZED, bare_only=True)


@case(
    "node/3.2/5",
    "chooses version 1 from an offer of [1, 2, 77]",
    "the responder chooses the highest version both speak",
    trusted=True,
)
async def negotiate(probe: Probe) -> str:
    answer = (await open_control(probe, versions=[1, 2, 77])).answer
    if answer.get("version") != 1:
        raise CaseFailed(f"answered {answer!r:.200}", probe.evidence)
    return "accepted with version 1"


@case(
    "node/3.2/6",
    "refuses a handshake that offers no version it speaks ([2])",
    "or none if the intersection is empty, in which case it MUST refuse the handshake.",
    trusted=True,
)
async def no_common_version(probe: Probe) -> str:
    answer = (await open_control(probe, versions=[2], accepted=False)).answer
    return f"refused: {answer.get('reason')}"


@case(
    "node/3.2/7",
    "an accepting response's version is one that was offered",
    "An accepting `HandshakeResponse.version` MUST be present, MUST be one of the offered "
    "versions, and MUST be supported by the responder.",
    trusted=True,
)
async def version_offered(probe: Probe) -> str:
    version = (await open_control(probe)).answer.get("version")
    if version != 1:
        raise CaseFailed(f"version {version}, but only [1] was offered", probe.evidence)
    return "version 1 of [1]"


# --- capabilities, heartbeat (§5.3, §5.5) ----------------------------------------------


@case(
    "node/5.3/1",
    "the capabilities a node sends name itself",
    "On NodeControl, `Capabilities.node_id` MUST be the sender's NodeId.",
    trusted=True,
)
async def own_capabilities(probe: Probe) -> str:
    session = await open_control(probe)
    caps = session.answer.get("capabilities")
    await session.send("capability_request")
    response = await session.expect("capability_response")
    for where, c in (
        ("handshake_response", caps),
        ("capability_response", response["capabilities"]),
    ):
        if c is not None and c.get("node_id") != str(probe.target.node_id):
            raise CaseFailed(f"{where} capabilities name {c.get('node_id')}", probe.evidence)
    models = len(response["capabilities"].get("supported_models", []))
    return f"both name the node; {models} model(s)"


@case(
    "node/5.5/4",
    "answers capability_request with capability_response",
    "A node that receives `capability_request` MUST answer with `capability_response`.",
    trusted=True,
)
async def capability_request(probe: Probe) -> str:
    session = await open_control(probe)
    await session.send("capability_request")
    await session.expect("capability_response")
    return "capability_response"


@case(
    "node/5.5/5",
    "a handshake and a ping joined in one write: response, then pong",
    "The transport may split and join frames arbitrarily",
    trusted=True,
)
async def joined(probe: Probe) -> str:
    both = handshake_frame(_friend(probe)) + node_frame("ping", nonce=99)
    wire = await probe.stream(preamble(NODE_CONTROL) + both, trusted=True)
    session = ControlSession(probe, wire)
    answer = await session.expect("handshake_response")
    if not answer.get("accepted"):
        raise CaseFailed(f"refused: {answer.get('reason')}", probe.evidence)
    pong = await session.expect("pong")
    if pong.get("nonce") != 99:
        raise CaseFailed(f"pong nonce {pong.get('nonce')}", probe.evidence)
    return "handshake_response, pong 99"


@case(
    "node/5.1/2",
    "sets reply_to on the pong that answers a ping",
    "A sender SHOULD set `reply_to` on `handshake_response`, `pong` and `capability_response` "
    "that answer a message.",
    level=Level.SHOULD,
    trusted=True,
)
async def reply_to(probe: Probe) -> str:
    session = await open_control(probe)
    ping_id = 987654
    await session.wire.send(frame(envelope({"type": "ping", "nonce": 5}, id=ping_id)))
    while True:
        message = await session.next()
        if isinstance(message, Ended):
            raise CaseFailed(f"the stream {message} before pong", probe.evidence)
        if message["payload"].get("type") == "pong":
            if message.get("reply_to") != ping_id:
                raise CaseFailed(f"reply_to {message.get('reply_to')}", probe.evidence)
            return f"reply_to {ping_id}"


@case(
    "node/5.5/6",
    "keeps a silent established channel for 57 s (the runner never pings), then answers a ping",
    "MUST NOT do so after less than 60 seconds of silence.",
    trusted=True,
    timeout=90,
)
async def silence(probe: Probe) -> str:
    session = await open_control(probe)
    # Just under the 60 s a node must wait: a ping then still gets its pong.
    quiet_until = trio.current_time() + 57
    while (left := quiet_until - trio.current_time()) > 0:
        with trio.move_on_after(left):
            message = await session.next(limit=left + 5)
            if isinstance(message, Ended):
                raise CaseFailed(
                    f"the node ended the channel ({message}) within 60 s", probe.evidence
                )
            payload = message["payload"]
            if payload.get("type") == "error":
                raise CaseFailed(
                    f"the node ended the channel within 60 s: {payload!r:.200}", probe.evidence
                )
            if payload.get("type") == "ping":  # answering a responder's ping is no silence
                raise CaseFailed("the node pinged: the case cannot stay silent", probe.evidence)
    await session.send("ping", nonce=60)
    await session.expect("pong")
    return "still established after 57 s of silence; pong 60"


@case(
    "node/2.1/4",
    "the NodeIds a node sends (its handshake_response, its capabilities) are canonical",
    "They MUST be zero: the last character is always `a` or `q`.",
    trusted=True,
)
async def canonical_ids(probe: Probe) -> str:
    session = await open_control(probe)
    answer = session.answer
    ids = [answer.get("node_id"), (answer.get("capabilities") or {}).get("node_id")]
    await session.send("capability_request")
    ids.append((await session.expect("capability_response"))["capabilities"].get("node_id"))
    for node_id in filter(None, ids):
        if not re.fullmatch(r"[a-z2-7]{51}[aq]", node_id):
            raise CaseFailed(f"a NodeId not in canonical form: {node_id!r}", probe.evidence)
    return f"{len(list(filter(None, ids)))} NodeIds, all canonical"


@case(
    "node/3.2/8",
    "every envelope a node sends carries the preamble's version, 1",
    "MUST equal the major version in that stream's preamble.",
    trusted=True,
)
async def envelope_versions(probe: Probe) -> str:
    # ControlSession.next fails the case on any envelope whose version is not 1.
    session = await open_control(probe)
    await session.send("ping", nonce=1)
    await session.expect("pong")
    await session.send("capability_request")
    await session.expect("capability_response")
    return "handshake_response, pong and capability_response: version 1"


@case(
    "node/2.3/2",
    "a refusal is read whole before the node closes the connection, five times over",
    "A side that has just written a frame the peer must read (a refusal, §3.5, §5.4) MUST NOT "
    "close the connection until the peer has read it",
)
async def refusal_read(probe: Probe) -> str:
    # A node that closes the connection right after writing its refusal loses it now
    # and then: QUIC's CONNECTION_CLOSE discards what is not yet acknowledged.
    for _ in range(5):
        await open_control(probe, trusted=False, accepted=False)
        probe.close()
    return "5 refusals read whole"
