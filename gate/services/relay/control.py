"""The relay's side of RelayControl (spec §6): a node asks for its name and activates
it, authorized by the NodeId iroh authenticated for the connection and by nothing it
says (§6.3). A request about any other name is answered UNAUTHORIZED and changes
nothing; names are compared case-insensitively.

A node's `dns_challenge` for its own `_acme-challenge` name passes its rate limit
(RATE_LIMITED), then is published through the relay's DNS backend: `ok=true` once the
backend has the record, `ok=false` with the backend's reason if it failed or the relay
has none. Its `txt_value` was checked when the message was decoded (INVALID_MESSAGE,
§4.2). `activate_domain` releases the node's records (gate.services.relay.dns)."""

from __future__ import annotations

import contextlib
import logging

import trio

from gate.protocol import (
    ActivateDomain,
    ActivationResponse,
    DnsChallenge,
    DnsChallengeResponse,
    DomainRequest,
    DomainResponse,
    ErrorCode,
    NodeId,
    ProtocolError,
    RelayError,
    RelayPayload,
    Role,
)
from gate.services.p2p.dispatch import IncomingStream
from gate.services.relay.control_stream import RelayControlStream
from gate.services.relay.dns.backend import DnsError
from gate.services.relay.dns.challenges import ChallengeRecords, RateLimited
from gate.services.relay.registry import NameRegistry
from gate.services.transport.framed import close_quietly
from gate.services.transport.quic import TransportError

__all__ = ["RelayControlServer"]

log = logging.getLogger("gate.relay")


class RelayControlServer:
    def __init__(
        self, domain: str, registry: NameRegistry, challenges: ChallengeRecords | None = None
    ) -> None:
        self.domain = domain
        self.registry = registry
        if challenges is None:  # no DNS backend: dns_challenge is answered ok=false
            challenges = ChallengeRecords(None, lifetime=600, per_minute=6)
        self.challenges = challenges

    def name_of(self, node_id: NodeId) -> str:
        return f"{node_id}.{self.domain}"

    async def serve(self, incoming: IncomingStream) -> None:
        remote = incoming.remote
        control = RelayControlStream(incoming.stream, Role.RESPONDER, incoming.trailing)
        try:
            while (message := await control.receive()) is not None:
                answer = await self.answer(remote, message.payload)
                await control.send(answer, reply_to=message.id)
        except ProtocolError as exc:
            with trio.move_on_after(1, shield=True):
                with contextlib.suppress(ProtocolError, TransportError, trio.BrokenResourceError):
                    await control.send(RelayError(code=exc.code, message=str(exc)[:200]))
        except (TransportError, trio.BrokenResourceError):
            pass
        finally:
            await close_quietly(incoming.stream)

    async def answer(self, remote: NodeId, request: RelayPayload) -> RelayPayload:
        """The answer to one request from the node `remote` (authenticated)."""
        own = self.name_of(remote)
        if isinstance(request, DomainRequest) and _same_node(request.node_id, remote):
            await self.registry.request(remote, own)
            log.info("name requested", extra={"node": str(remote), "domain": own})
            return DomainResponse(domain=own)
        if isinstance(request, ActivateDomain) and _same_name(request.domain, own):
            await self.registry.activate(remote, own)
            self.challenges.release(remote)  # its certificate is issued (§6.4)
            log.info("name activated", extra={"node": str(remote), "domain": own})
            return ActivationResponse(ok=True)
        challenge = f"_acme-challenge.{own}"
        if isinstance(request, DnsChallenge) and _same_name(request.domain, challenge):
            return await self._dns_challenge(remote, challenge, request.txt_value)
        if isinstance(request, DnsChallenge):
            self.challenges.refuse()
        log.warning(
            "refused a request for another node's name",
            extra={"node": str(remote), "request": type(request).__name__},
        )
        return RelayError(
            code=ErrorCode.UNAUTHORIZED, message=f"a node acts only on its own name, {own}"
        )

    async def _dns_challenge(self, remote: NodeId, name: str, value: str) -> RelayPayload:
        challenges = self.challenges
        if challenges.backend is None:
            challenges.refuse()
            return DnsChallengeResponse(ok=False, reason="this relay publishes no DNS records")
        try:
            challenges.admit(remote)
        except RateLimited as exc:
            log.warning("DNS challenge rate-limited", extra={"node": str(remote)})
            return RelayError(code=ErrorCode.RATE_LIMITED, message=str(exc))
        try:
            await challenges.publish(remote, name, value)
        except DnsError as exc:
            log.warning(
                "DNS challenge not published", extra={"node": str(remote), "error": str(exc)}
            )
            return DnsChallengeResponse(ok=False, reason=str(exc)[:200])
        log.info("DNS challenge published", extra={"node": str(remote), "dns_name": name})
        return DnsChallengeResponse(ok=True)


def _same_node(text: str, node_id: NodeId) -> bool:
    try:
        return NodeId.parse(text) == node_id
    except ValueError:
        return False


def _same_name(a: str, b: str) -> bool:
    return a.strip().rstrip(".").lower() == b.lower()
