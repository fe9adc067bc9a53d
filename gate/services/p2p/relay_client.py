"""This node's registration with Gate relays (`[relay]` in gate.toml; spec §6).

One task per configured relay: connect with this node's key (the relay authenticates
the NodeId from it), open a RelayControl stream, ask for the node's name
(domain_request), make sure the certificate covers it, activate it (activate_domain),
then keep the connection: the relay opens the browsers' tls_proxy streams on it, which
are dispatched here by the node's table (a relay this node registered with is the only
opener it admits for them, `registered`). Two checks tell that the relay is still there:
a QUIC probe every `_PROBE_EVERY` seconds, which the relay's QUIC stack answers without
its application (a relay killed without a goodbye is noticed after `_SILENT_LIMIT`
seconds of silence), and a domain_request every `_KEEPALIVE` seconds, answered within
`_ANSWER_TIMEOUT` (the relay's service itself still answers). When either fails, or the
connection drops, the task reconnects with jittered exponential backoff.

With ACME (`acme`: no `tls.cert_file`), each registered link also keeps its name
certified (gate.services.acme.issuer) in the background: registration never waits for
the CA, the self-signed certificate serves until the first issuance. The issuer's
dns_challenge and activate_domain share the RelayControl stream with the keep-alive, one
request at a time (spec §6.2), so every request takes the link's lock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from gate.peers_config import parse_peer_spec
from gate.protocol import (
    ActivateDomain,
    ActivationResponse,
    DnsChallenge,
    DnsChallengeResponse,
    DomainRequest,
    DomainResponse,
    NodeId,
    ProtocolError,
    RelayPayload,
    Role,
    StreamType,
    encode_preamble,
)
from gate.services.acme.issuer import AcmeIssuer, IssuanceFailed
from gate.services.http.tls import NodeCertificate
from gate.services.relay.control_stream import RelayControlStream, RelayRefused
from gate.services.transport.framed import close_quietly
from gate.services.transport.quic import Connection, Endpoint, QuicStream, TransportError

__all__ = ["RelayClient", "RelayLink"]

log = logging.getLogger("gate.relay.client")
# How a relay link fails: the session ends, and is tried again after a backoff.
_LINK_FAILURES: Final = (
    TransportError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    ProtocolError,
    RelayRefused,
    ConnectionError,
)

# Browser connections a relay may pass to this node at once (streams on its connection).
RELAY_STREAMS: Final = 4096
_CONNECT_TIMEOUT: Final = 10.0
_ANSWER_TIMEOUT: Final = 10.0
# Publishing a TXT record waits for the relay's DNS provider: a Cloudflare relay tries a
# call up to 4 times (30 s each at most, with waits between), so allow it all.
_DNS_TIMEOUT: Final = 300.0
_KEEPALIVE: Final = 15.0
_PROBE_EVERY: Final = 1.0
# Several probes unanswered, with room for a busy machine's scheduling delays.
_SILENT_LIMIT: Final = 4.0
_BACKOFF_INITIAL, _BACKOFF_MAX = 0.5, 30.0

StreamServer = Callable[[Connection, NodeId, QuicStream], Awaitable[None]]


@dataclass
class RelayLink:
    """One configured relay, as this node sees it."""

    relay_id: NodeId
    addresses: list[str]
    state: str = "registering"  # registering | registered | failed (error says why)
    domain: str = ""  # this node's name there, once the relay gave it
    error: str = ""
    attempts: int = field(default=0)
    certificate: Callable[[str], dict[str, str]] | None = None  # the name's, from the issuer

    @property
    def url(self) -> str:
        """This node's public URL through the relay (kept while it reconnects)."""
        return f"https://{self.domain}" if self.domain else ""

    def describe(self) -> dict[str, str]:
        out = {
            "relay_id": str(self.relay_id),
            "state": self.state,
            "reason": self.error if self.state == "failed" else "",
            "url": self.url,
        }
        if self.certificate is not None and self.domain:
            out |= self.certificate(self.domain)
        return out


class RelayClient:
    def __init__(
        self,
        servers: list[str],
        node_id: NodeId,
        certificate: NodeCertificate,
        acme: AcmeIssuer | None = None,
    ) -> None:
        self.node_id = node_id
        self.certificate = certificate
        self.acme = acme
        self.links: dict[NodeId, RelayLink] = {}
        for spec in servers:
            relay_id, addresses = parse_peer_spec(spec)
            self.links[relay_id] = RelayLink(
                relay_id, addresses, certificate=acme.status if acme else None
            )
        self._rng = random.Random()

    def registered(self, node_id: NodeId) -> bool:
        """Whether `node_id` is a relay this node registered with (it may open tls_proxy)."""
        link = self.links.get(node_id)
        return link is not None and link.state == "registered"

    def status(self) -> list[dict[str, str]]:
        """Each relay's state and this node's URL there, for `gate status`, /health,
        node_status and the web UI."""
        return [link.describe() for link in self.links.values()]

    async def run(self, endpoint: Endpoint, serve_stream: StreamServer) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                nursery.start_soon(self._maintain, endpoint, serve_stream, link)

    async def _maintain(
        self, endpoint: Endpoint, serve_stream: StreamServer, link: RelayLink
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            link.attempts = attempt
            try:
                await self._session(endpoint, serve_stream, link)
                attempt = 0
            except (*_LINK_FAILURES, OSError, ValueError) as exc:
                link.error = str(exc) or type(exc).__name__
                log.warning(
                    "relay unavailable", extra={"relay": link.relay_id.short(), "error": link.error}
                )
            link.state = "failed"
            delay = min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2 ** min(attempt, 6))
            await trio.sleep(delay * self._rng.uniform(0.5, 1.0))  # jittered

    async def _session(
        self, endpoint: Endpoint, serve_stream: StreamServer, link: RelayLink
    ) -> None:
        link.state = "registering"  # the last failure's reason stays until this succeeds
        with trio.fail_after(_CONNECT_TIMEOUT):
            conn = await endpoint.connect(link.relay_id, link.addresses)
        # Each browser connection is one stream the relay opens: QUIC's default of 100
        # at once would make the 101st wait for a stream to end.
        conn.allow_incoming_streams(RELAY_STREAMS)
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                stream = await conn.open_stream()
                await stream.send_all(encode_preamble(StreamType.RELAY_CONTROL))
            control = _LockedControl(RelayControlStream(stream, Role.INITIATOR))
            try:
                domain = await self._register(control)
                link.domain, link.state, link.error = domain, "registered", ""
                log.info(
                    "registered with relay",
                    extra={"relay": link.relay_id.short(), "url": link.url},
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keepalive, control, conn)
                    nursery.start_soon(self._probe, conn)
                    if self.acme is not None:
                        nursery.start_soon(self.acme.keep, domain, _Challenges(control))
                    while True:  # the relay's tls_proxy streams, until the connection ends
                        try:
                            incoming = await conn.accept_stream()
                        except (TransportError, trio.BrokenResourceError) as exc:
                            link.error = str(exc) or "the relay connection ended"
                            break
                        nursery.start_soon(serve_stream, conn, link.relay_id, incoming)
                    nursery.cancel_scope.cancel()
            finally:
                await close_quietly(stream)
        finally:
            link.state = "registering"
            conn.close(0, "relay session ended")

    async def _register(self, control: _LockedControl) -> str:
        answer = await control.request(DomainRequest(node_id=str(self.node_id)))
        if not isinstance(answer, DomainResponse):
            raise ConnectionError(f"unexpected answer {type(answer).__name__}")
        domain = answer.domain.lower()
        if not domain.startswith(f"{self.node_id}."):
            raise ConnectionError(f"the relay gave a name not this node's: {domain}")
        await trio.to_thread.run_sync(self.certificate.cover, [domain])
        activated = await control.request(ActivateDomain(domain=domain))
        if not isinstance(activated, ActivationResponse) or not activated.ok:
            reason = getattr(activated, "reason", None) or "activation refused"
            raise ConnectionError(reason)
        return domain

    async def _keepalive(self, control: _LockedControl, conn: Connection) -> None:
        """Ask again now and then: an answer says the relay is still there; no answer
        closes the connection, which ends the session."""
        try:
            while True:
                await trio.sleep(_KEEPALIVE)
                await control.request(DomainRequest(node_id=str(self.node_id)))
        except _LINK_FAILURES as exc:
            conn.close(0, f"relay keepalive failed: {exc or type(exc).__name__}")

    async def _probe(self, conn: Connection) -> None:
        """Probe often: a relay whose datagrams stop coming for `_SILENT_LIMIT` seconds
        is gone (killed, or its machine cut off); closing the connection ends the
        session. Costs the relay one empty datagram and an ACK per probe."""
        try:
            heard, heard_at = conn.probe(), trio.current_time()
            while True:
                await trio.sleep(_PROBE_EVERY)
                count = conn.probe()
                if count != heard:
                    heard, heard_at = count, trio.current_time()
                elif trio.current_time() - heard_at >= _SILENT_LIMIT:
                    conn.close(0, f"relay silent for {_SILENT_LIMIT:.0f} s")
                    return
        except TransportError:
            return  # the connection is gone already: accept_stream ends the session


class _LockedControl:
    """The link's RelayControl stream, one request at a time (spec §6.2): the
    keep-alive and the issuer share it. `answer_within` bounds the answer, not the wait for
    the lock (a slow dns_challenge must not fail a keep-alive behind it)."""

    def __init__(self, control: RelayControlStream) -> None:
        self._control = control
        self._lock = trio.Lock()

    async def request(
        self, payload: RelayPayload, answer_within: float = _ANSWER_TIMEOUT
    ) -> RelayPayload:
        async with self._lock:
            with trio.fail_after(answer_within):
                return await self._control.request(payload)


class _Challenges:
    """The issuer's way to the relay's DNS (gate.services.acme.issuer.ChallengeRelay)."""

    def __init__(self, control: _LockedControl) -> None:
        self._control = control

    async def publish(self, domain: str, txt_value: str) -> None:
        try:
            answer = await self._control.request(
                DnsChallenge(domain=domain, txt_value=txt_value), answer_within=_DNS_TIMEOUT
            )
        except _LINK_FAILURES as exc:
            raise IssuanceFailed(f"dns_challenge: {exc or type(exc).__name__}") from exc
        if not isinstance(answer, DnsChallengeResponse) or not answer.ok:
            reason = getattr(answer, "reason", None) or "not published"
            raise IssuanceFailed(f"the relay did not publish the challenge: {reason}")

    async def done(self, name: str) -> None:
        try:
            await self._control.request(ActivateDomain(domain=name))
        except _LINK_FAILURES as exc:
            raise IssuanceFailed(f"activate_domain: {exc or type(exc).__name__}") from exc
