"""Cases for §6 (RelayControl: the state table and authorization by the authenticated
NodeId) against a relay. Any key may register, so these run from a stranger's key."""

from __future__ import annotations

from gate.conformance.probe import Probe
from gate.conformance.registry import CaseFailed, case
from gate.conformance.relay_session import open_relay_control
from gate.identity import NodeIdentity
from gate.protocol import ErrorCode, NodeId

UNAUTHORIZED = ErrorCode.UNAUTHORIZED


def _other() -> str:
    return str(NodeId(NodeIdentity.generate().public_key_bytes))


@case(
    "relay/6.3/1",
    "answers a domain_request for the node's own id with <node-id>.<domain>",
    "`domain_request`: `node_id` MUST equal N; the answer is `N.D`.",
)
async def own_name(probe: Probe) -> str:
    session = await open_relay_control(probe)
    return f"named {await session.name()}"


@case(
    "relay/6.3/2",
    "refuses a domain_request for another node's id with UNAUTHORIZED",
    "The relay MUST answer a request that fails these checks with `error` code UNAUTHORIZED",
)
async def other_id(probe: Probe) -> str:
    session = await open_relay_control(probe)
    return await session.refused("domain_request", UNAUTHORIZED, node_id=_other())


def _refused_names(n: int, title: str, tag: str, make: object) -> None:
    @case(
        f"relay/6.3/{n}",
        f"refuses {title} with UNAUTHORIZED",
        "The relay MUST authorize every request by N alone.",
    )
    async def refused(probe: Probe) -> str:
        session = await open_relay_control(probe)
        await session.name()
        own, domain = probe.own_id, session.relay_domain
        names = make(own, domain, _other())  # type: ignore[operator]
        for name in names:
            fields = {"domain": name}
            if tag == "dns_challenge":
                fields["txt_value"] = "conformance"
            await session.refused(tag, UNAUTHORIZED, **fields)
        return f"{len(names)} name(s) refused: {', '.join(names)}"


_refused_names(
    3,
    "an activate_domain for another node's name, the bare domain, a subdomain",
    "activate_domain",
    lambda own, d, other: [f"{other}.{d}", d, f"x.{own}.{d}", f"{own}.{d}.evil.test"],
)
_refused_names(
    4,
    "a dns_challenge for another node's name or not under _acme-challenge",
    "dns_challenge",
    lambda own, d, other: [f"_acme-challenge.{other}.{d}", f"{own}.{d}", f"_acme-challenge.{d}"],
)


@case(
    "relay/6.3/5",
    "activates the node's own name",
    "`activate_domain`: `domain` MUST be `N.D`.",
)
async def activate_own(probe: Probe) -> str:
    session = await open_relay_control(probe)
    name = await session.name()
    answer = await session.ask("activate_domain", "activation_response", domain=name)
    return f"activation_response ok={answer.get('ok')}"


@case(
    "relay/6.3/6",
    "answers a dns_challenge for _acme-challenge.<own name> (ok or a reason)",
    "`dns_challenge`: `domain` MUST be `_acme-challenge.N.D`.",
)
async def challenge_own(probe: Probe) -> str:
    session = await open_relay_control(probe)
    name = await session.name()
    answer = await session.ask(
        "dns_challenge", "dns_challenge_response", domain=f"_acme-challenge.{name}", txt_value="x"
    )
    if not answer.get("ok") and not answer.get("reason"):
        raise CaseFailed("ok = false without a reason", probe.evidence)
    return f"dns_challenge_response ok={answer.get('ok')} {answer.get('reason') or ''}".strip()


@case(
    "relay/6.3/7",
    "compares names case-insensitively: the own name in upper case is activated",
    "Domain names are compared case-insensitively.",
)
async def case_insensitive(probe: Probe) -> str:
    session = await open_relay_control(probe)
    name = await session.name()
    answer = await session.ask("activate_domain", "activation_response", domain=name.upper())
    return f"activation_response ok={answer.get('ok')}"


@case(
    "relay/6.2/1",
    "a refused request returns the channel to idle: the next request is answered",
    "An `error` from the relay answers the outstanding request and returns the channel to `idle`",
)
async def idle_after_error(probe: Probe) -> str:
    session = await open_relay_control(probe)
    await session.refused("domain_request", UNAUTHORIZED, node_id=_other())
    return f"refused, then named {await session.name()}"


def _answer_from_node(n: int, tag: str, fields: dict[str, object]) -> None:
    @case(
        f"relay/6.2/{n}",
        f"a {tag} from the node: UNEXPECTED_MESSAGE",
        "an answer nobody asked for is UNEXPECTED_MESSAGE.",
    )
    async def unasked(probe: Probe) -> str:
        session = await open_relay_control(probe)
        payload = dict(fields)
        if tag == "domain_response":
            payload["domain"] = f"{probe.own_id}.example"
        return await session.refused(tag, ErrorCode.UNEXPECTED_MESSAGE, **payload)


_answer_from_node(2, "domain_response", {})
_answer_from_node(3, "activation_response", {"ok": True})
_answer_from_node(4, "dns_challenge_response", {"ok": True})


@case(
    "relay/6.2/5",
    "answers requests one after another on one stream",
    "The node sends one request and waits for its answer: one request is outstanding at a time.",
)
async def in_turn(probe: Probe) -> str:
    session = await open_relay_control(probe)
    name = await session.name()
    await session.ask("activate_domain", "activation_response", domain=name)
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
