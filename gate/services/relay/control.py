"""The relay's side of RelayControl (spec §6): a node asks for its name and activates
it, authorized by the NodeId iroh authenticated for the connection and by nothing it
says (§6.3). A request about any other name is answered UNAUTHORIZED and changes
nothing; names are compared case-insensitively."""

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
from gate.services.relay.registry import NameRegistry
from gate.services.transport.framed import close_quietly
from gate.services.transport.quic import TransportError

__all__ = ["RelayControlServer"]

log = logging.getLogger("gate.relay")


class RelayControlServer:
    def __init__(self, domain: str, registry: NameRegistry) -> None:
        self.domain = domain
        self.registry = registry

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
            log.info("name activated", extra={"node": str(remote), "domain": own})
            return ActivationResponse(ok=True)
        if isinstance(request, DnsChallenge) and _same_name(
            request.domain, f"_acme-challenge.{own}"
        ):
            return DnsChallengeResponse(ok=False, reason="this relay publishes no DNS records")
        log.warning(
            "refused a request for another node's name",
            extra={"node": str(remote), "request": type(request).__name__},
        )
        return RelayError(
            code=ErrorCode.UNAUTHORIZED, message=f"a node acts only on its own name, {own}"
        )


def _same_node(text: str, node_id: NodeId) -> bool:
    try:
        return NodeId.parse(text) == node_id
    except ValueError:
        return False


def _same_name(a: str, b: str) -> bool:
    return a.strip().rstrip(".").lower() == b.lower()
