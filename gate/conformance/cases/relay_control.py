"""Cases for §6 (RelayControl: the state table, authorization by the authenticated
NodeId, and the checks on `dns_challenge`) against a relay. Any key may register, so
these run from a stranger's key.

The runner's `dns_challenge` requests for its own name are real: a relay with a DNS
provider publishes them (the relay removes them when the runner's connection ends,
§6.4). Every case sends a handful at most; the rate-limit cases (§6.4) send up to
RATE_PROBES.

Four tables: one request refused (`_refused`), requests refused once the node has its
name (`_refused_named`), a named node's request answered (`_answered`), and bad
`txt_value`s (`_bad_txt_value`); the cases of their own shape follow them. A row's
`send` is a function of the session giving the request (tag, fields), or a list of them."""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

from gate.conformance.probe import Probe, error_code
from gate.conformance.registry import CaseFailed, CaseSkipped, Level, Row, case, table
from gate.conformance.relay_session import RelaySession, open_relay_control
from gate.conformance.wire import other_node_id
from gate.protocol import ErrorCode

UNAUTHORIZED = ErrorCode.UNAUTHORIZED
INVALID_MESSAGE = ErrorCode.INVALID_MESSAGE
UNEXPECTED = ErrorCode.UNEXPECTED_MESSAGE
RATE_LIMITED = ErrorCode.RATE_LIMITED
# Enough to pass the reference's bucket of 6 (§6.4) even when no earlier case took one.
RATE_PROBES: Final = 8

Request = tuple[str, dict[str, Any]]


def txt_value(seed: str) -> str:
    """A valid `txt_value` (§6.1): as DNS-01 makes one, the base64url SHA-256 of some
    bytes without padding, 43 characters. Distinct seeds give distinct values."""
    digest = hashlib.sha256(f"gate conformance {seed}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _activations(*names: str) -> list[Request]:
    return [("activate_domain", {"domain": name}) for name in names]


def _challenges(*names: str) -> list[Request]:
    """dns_challenges for `names`, each with a valid txt_value of its own."""
    return [("dns_challenge", {"domain": name, "txt_value": txt_value(name)}) for name in names]


def _ok_or_reason(answer: dict[str, Any], probe: Probe) -> str:
    """A dns_challenge_response: ok=true, or ok=false with a reason (§6.1, §6.4)."""
    if not answer.get("ok") and not answer.get("reason"):
        raise CaseFailed("ok = false without a reason", probe.evidence)
    return f"dns_challenge_response ok={answer.get('ok')} {answer.get('reason') or ''}".strip()


# --- one request, refused with the error `expect` --------------------------------------------


async def _refused(probe: Probe, row: Row) -> str:
    session = await open_relay_control(probe)
    tag, fields = row.send(session)
    return await session.refused(tag, row.expect, **fields)


table(
    [
        Row(
            "relay/6.3/2",
            "refuses a domain_request for another node's id with UNAUTHORIZED",
            "The relay MUST answer a request that fails these checks with `error` code "
            "UNAUTHORIZED",
            send=lambda _: ("domain_request", {"node_id": other_node_id()}),
            expect=UNAUTHORIZED,
        ),
        Row(
            "relay/6.2/2",
            "a domain_response from the node: UNEXPECTED_MESSAGE",
            "an answer nobody asked for is UNEXPECTED_MESSAGE.",
            send=lambda s: ("domain_response", {"domain": f"{s.probe.own_id}.example"}),
            expect=UNEXPECTED,
        ),
        Row(
            "relay/6.2/3",
            "a activation_response from the node: UNEXPECTED_MESSAGE",
            "an answer nobody asked for is UNEXPECTED_MESSAGE.",
            send=lambda _: ("activation_response", {"ok": True}),
            expect=UNEXPECTED,
        ),
        Row(
            "relay/6.2/4",
            "a dns_challenge_response from the node: UNEXPECTED_MESSAGE",
            "an answer nobody asked for is UNEXPECTED_MESSAGE.",
            send=lambda _: ("dns_challenge_response", {"ok": True}),
            expect=UNEXPECTED,
        ),
    ],
    _refused,
)


# --- once the node has its name (`session.domain`, N.D; `relay_domain`, D): requests,
# each refused with the error `expect` ----------------------------------------------------------


async def _refused_named(probe: Probe, row: Row) -> str:
    session = await open_relay_control(probe, named=True)
    requests: list[Request] = row.send(session)
    for tag, fields in requests:
        await session.refused(tag, row.expect, **fields)
    names = ", ".join(str(fields.get("domain")) for _, fields in requests)
    return f"{len(requests)} request(s) refused with {int(row.expect)}: {names}"


_BY_N_ALONE = "The relay MUST authorize every request by N alone."
table(
    [
        Row(
            "relay/6.3/3",
            "refuses an activate_domain for another node's name, the bare domain, a subdomain "
            "with UNAUTHORIZED",
            _BY_N_ALONE,
            send=lambda s: _activations(
                f"{other_node_id()}.{s.relay_domain}",
                s.relay_domain,
                f"x.{s.domain}",
                f"{s.domain}.evil.test",
            ),
            expect=UNAUTHORIZED,
        ),
        Row(
            "relay/6.3/4",
            "refuses a dns_challenge for another node's name or not under _acme-challenge with "
            "UNAUTHORIZED",
            _BY_N_ALONE,
            send=lambda s: _challenges(
                f"_acme-challenge.{other_node_id()}.{s.relay_domain}",
                s.domain,
                f"_acme-challenge.{s.relay_domain}",
            ),
            expect=UNAUTHORIZED,
        ),
        Row(
            "relay/6.4/7",
            "a bad txt_value for another node's name: INVALID_MESSAGE, not UNAUTHORIZED",
            "The relay MUST check `dns_challenge` in this order",
            send=lambda s: [
                (
                    "dns_challenge",
                    {
                        "domain": f"_acme-challenge.{other_node_id()}.{s.relay_domain}",
                        "txt_value": "x",
                    },
                )
            ],
            expect=INVALID_MESSAGE,
        ),
    ],
    _refused_named,
)


# --- once the node has its name: one request, answered with the message `expect` --------------


async def _answered(probe: Probe, row: Row) -> str:
    session = await open_relay_control(probe, named=True)
    tag, fields = row.send(session)
    answer = await session.ask(tag, row.expect, **fields)
    if row.expect == "dns_challenge_response":
        return _ok_or_reason(answer, probe)
    return f"{row.expect} ok={answer.get('ok')}"


table(
    [
        Row(
            "relay/6.3/5",
            "activates the node's own name",
            "`activate_domain`: `domain` MUST be `N.D`.",
            send=lambda s: ("activate_domain", {"domain": s.domain}),
            expect="activation_response",
        ),
        Row(
            "relay/6.3/6",
            "answers a dns_challenge for _acme-challenge.<own name> (ok or a reason)",
            "`dns_challenge`: `domain` MUST be `_acme-challenge.N.D`.",
            send=lambda s: (
                "dns_challenge",
                {"domain": f"_acme-challenge.{s.domain}", "txt_value": txt_value("6.3/6")},
            ),
            expect="dns_challenge_response",
        ),
        Row(
            "relay/6.3/7",
            "compares names case-insensitively: the own name in upper case is activated",
            "Domain names are compared case-insensitively.",
            send=lambda s: ("activate_domain", {"domain": s.domain.upper()}),
            expect="activation_response",
        ),
    ],
    _answered,
)


# --- §6.4: a dns_challenge for the node's own name whose `txt_value` (`send`) does not
# decode: INVALID_MESSAGE, and nothing after it ------------------------------------------------


async def _bad_txt_value(probe: Probe, row: Row) -> str:
    session = await open_relay_control(probe, named=True)
    challenge = f"_acme-challenge.{session.domain}"
    got = await session.refused(
        "dns_challenge", INVALID_MESSAGE, domain=challenge, txt_value=row.send
    )
    return f"{got}, then {await session.wire.quiet(2.0)}"


_VALID = txt_value("6.4 invalid")
_DECODES = "the message decodes, `txt_value` included (else INVALID_MESSAGE, §4.2)"
table(
    [
        Row(
            "relay/6.4/2",
            "a dns_challenge for its own name, txt_value of 42 characters: INVALID_MESSAGE",
            _DECODES,
            send=_VALID[:42],
            expect=INVALID_MESSAGE,
        ),
        Row(
            "relay/6.4/3",
            "a dns_challenge for its own name, txt_value of 44 characters: INVALID_MESSAGE",
            _DECODES,
            send=_VALID + "A",
            expect=INVALID_MESSAGE,
        ),
        Row(
            "relay/6.4/4",
            "a dns_challenge for its own name, txt_value padded (42 characters and '='): "
            "INVALID_MESSAGE",
            _DECODES,
            send=_VALID[:42] + "=",
            expect=INVALID_MESSAGE,
        ),
        Row(
            "relay/6.4/5",
            "a dns_challenge for its own name, txt_value with '+' (base64, not base64url): "
            "INVALID_MESSAGE",
            _DECODES,
            send=_VALID[:42] + "+",
            expect=INVALID_MESSAGE,
        ),
        Row(
            "relay/6.4/6",
            "a dns_challenge for its own name, txt_value ending in a newline: INVALID_MESSAGE",
            _DECODES,
            send=_VALID[:42] + "\n",
            expect=INVALID_MESSAGE,
        ),
    ],
    _bad_txt_value,
)


# --- the cases of their own shape ---------------------------------------------------------------


@case(
    "relay/6.3/1",
    "answers a domain_request for the node's own id with <node-id>.<domain>",
    "`domain_request`: `node_id` MUST equal N; the answer is `N.D`.",
)
async def own_name(probe: Probe) -> str:
    session = await open_relay_control(probe)
    return f"named {await session.name()}"


@case(
    "relay/6.2/1",
    "a refused request returns the channel to idle: the next request is answered",
    "An `error` from the relay answers the outstanding request and returns the channel to `idle`",
)
async def idle_after_error(probe: Probe) -> str:
    session = await open_relay_control(probe)
    await session.refused("domain_request", UNAUTHORIZED, node_id=other_node_id())
    return f"refused, then named {await session.name()}"


@case(
    "relay/6.2/5",
    "answers requests one after another on one stream",
    "The node sends one request and waits for its answer: one request is outstanding at a time.",
)
async def in_turn(probe: Probe) -> str:
    session = await open_relay_control(probe, named=True)
    await session.ask("activate_domain", "activation_response", domain=session.domain)
    await session.name()
    return "domain, activation, domain"


@case(
    "relay/6.2/6",
    "an error from the node in idle closes the channel: the relay answers nothing",
    "| idle | initiator | error | closed |",
)
async def node_error(probe: Probe) -> str:
    session = await open_relay_control(probe)
    await session.send("error", code=500, message="conformance")
    return await session.wire.quiet()


@case(
    "relay/6.4/1",
    "answers two dns_challenges for its own name in turn (ok, or ok = false with a reason)",
    "it answers `ok = true` only once its DNS provider has accepted the record; "
    "`ok = false` with a `reason` if it could not publish (its provider failed, or it "
    "publishes no records).",
)
async def challenge_answered(probe: Probe) -> str:
    session = await open_relay_control(probe, named=True)
    challenge = f"_acme-challenge.{session.domain}"
    seen = []
    for n in (1, 2):  # two values at one name: DNS-01 allows it (§6.4)
        answer = await session.ask(
            "dns_challenge",
            "dns_challenge_response",
            domain=challenge,
            txt_value=txt_value(f"6.4/1 {n}"),
        )
        seen.append(_ok_or_reason(answer, probe))
    return "; ".join(seen)


async def _until_limited(session: RelaySession, seed: str) -> tuple[int | None, int]:
    """Valid dns_challenges for the own name, up to RATE_PROBES, until one is answered
    RATE_LIMITED: (which request was, None if none; how many were published). Each
    other answer must be a dns_challenge_response (ok, or ok = false with a reason)."""
    challenge = f"_acme-challenge.{session.domain}"
    published = 0
    for n in range(1, RATE_PROBES + 1):
        await session.send("dns_challenge", domain=challenge, txt_value=txt_value(f"{seed} {n}"))
        answer = await session.answer()
        if error_code(answer) == RATE_LIMITED:
            return n, published
        if answer.get("type") != "dns_challenge_response":
            raise CaseFailed(f"dns_challenge answered with {answer!r:.200}", session.probe.evidence)
        _ok_or_reason(answer, session.probe)
        published += bool(answer.get("ok"))
    return None, published


@case(
    "relay/6.4/8",
    f"limits a node's dns_challenges: RATE_LIMITED within {RATE_PROBES} in a row",
    "A relay SHOULD limit each node's `dns_challenge` requests",
    level=Level.SHOULD,
    timeout=120.0,
)
async def rate_limited(probe: Probe) -> str:
    session = await open_relay_control(probe, named=True)
    limited_at, published = await _until_limited(session, "6.4/8")
    if limited_at is not None:
        return f"RATE_LIMITED at request {limited_at} ({published} published before it)"
    if not published:  # ok = false every time: no DNS provider's quota to spend
        raise CaseSkipped(f"the relay published none of {RATE_PROBES} (ok = false)")
    raise CaseFailed(
        f"{RATE_PROBES} dns_challenges in a row, {published} published, none RATE_LIMITED",
        probe.evidence,
    )


@case(
    "relay/6.4/9",
    "past its rate: another node's name is still UNAUTHORIZED, a bad txt_value still "
    "INVALID_MESSAGE",
    "`domain` is the node's own (else UNAUTHORIZED, §6.3); the node's rate (else RATE_LIMITED).",
    timeout=120.0,
)
async def order_past_the_rate(probe: Probe) -> str:
    session = await open_relay_control(probe, named=True)
    name = session.domain
    limited_at, _ = await _until_limited(session, "6.4/9")
    if limited_at is None:
        raise CaseSkipped(f"no RATE_LIMITED within {RATE_PROBES}: the order is not visible")
    theirs = f"_acme-challenge.{other_node_id()}.{session.relay_domain}"
    await session.refused("dns_challenge", UNAUTHORIZED, domain=theirs, txt_value=txt_value(name))
    await session.refused(
        "dns_challenge", INVALID_MESSAGE, domain=f"_acme-challenge.{name}", txt_value="x"
    )
    return f"RATE_LIMITED at request {limited_at}, then UNAUTHORIZED, then INVALID_MESSAGE"
