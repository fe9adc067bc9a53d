"""The MUSTs of spec/protocol.md that no live case checks, each with the reason.

Keys are verbatim fragments of the MUST sentence they answer for (a test matches them
against the spec, and fails on a MUST that has neither a case nor a reason here, and on
a reason whose sentence is gone). Most are what a black box cannot see from outside (a
sender's own discipline, what a node does with what it learned), or what the kit
(gate.conformance.kit) and the vectors check without a network instead.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REASONS"]

_KIT = "checked in-process by gate.conformance.kit"
_SENDER = "the target's own sending; every frame the runner reads is checked against it"

REASONS: Final[dict[str, str]] = {
    # §2.1
    "It MUST NOT be used as a name, label, key or identifier.": "a display rule: nothing "
    "on the wire shows a prefix used as a name",
    # §2.2
    "A NodeId inside a message is a claim: it MUST be checked against": "cases node/5.4/2 "
    "(a handshake naming another node) and relay/6.3/2 (a domain_request for another id)",
    # §2.3
    "A receiver MUST NOT rely on the code": "what a receiver does with a QUIC code is not "
    "visible on the wire",
    # §3.1
    "The initiator MUST send the preamble exactly once": "the target as initiator: it "
    "would have to dial the runner (a relay's tls_proxy does: relay/7.4/1 reads its preamble)",
    # §3.4
    "A sender MUST NOT send a frame whose payload exceeds 1 MiB.": _SENDER + " (1 MiB maximum)",
    "MUST be split into several frames (§7.1).": _SENDER + " (1 MiB maximum)",
    # §3.5
    "The initiator MUST treat a rejected stream as failed": "the target as initiator: "
    "needs it to dial the runner; the kit's channels see a bare error as the code it carries",
    "It MUST accept a bare error object as the first frame": "the target as initiator: it "
    "would have to dial the runner; the kit's channels report a bare error's code",
    # §4.1
    "A sender MUST NOT send an integer outside": _SENDER,
    # §4.3
    "A side MUST NOT finish its sending half in a state that": _KIT + " (finishing where "
    "may_finish does not allow it is refused by the sender)",
    "A side MUST NOT send anything after finishing.": "QUIC itself stops a finished half "
    "from sending; the kit checks the channels refuse it",
    "A stream that the peer resets, or that is lost with its connection, MUST NOT be": "the "
    "target as requester: node/7.3 cases check the responder side of resets",
    # §5.3
    "A receiver MUST NOT attribute capabilities to any node other than": "what a node "
    "believes about its peers is not visible on the wire",
    # §5.4
    "The initiator MUST check that `HandshakeResponse.node_id` equals": "the target as "
    "initiator: it would have to dial the runner",
    "An initiator whose handshake is refused MUST NOT use the connection": "the target as "
    "initiator: it would have to dial the runner",
    "If not, it MUST NOT use the connection and SHOULD send `error`": "the target as "
    "initiator: it would have to dial the runner",
    # §5.5
    "While the channel is `established` it MUST send a message on it": "the target as "
    "initiator (the dialer pings): it would have to dial the runner",
    "MUST then consider the peer disconnected on that connection": "a node's own state "
    "about a peer is not visible on the wire",
    "MUST likewise consider the session over": "a node's own state about a peer is not "
    "visible on the wire",
    # §6.4 (its first MUST, the check order, has cases relay/6.4/2-9; that a refused
    # request published nothing is not visible to the runner either, for the reasons below)
    "The relay MUST remove a node's challenge records, whichever comes first": "the "
    "records live at the relay's DNS provider, which the runner does not query (it knows "
    "neither the zone's servers nor how long they cache); Gate's tests/e2e/test_relay_dns.py "
    "checks each removal with DNS queries to pebble-challtestsrv",
    "A record whose publication failed MUST NOT be left behind either.": "the runner cannot "
    "make the relay's DNS provider fail, nor see the provider's records",
    "A node MUST answer its ACME challenge only after `ok = true`": "the target as a relay's "
    "client and an ACME client: it would have to register with the runner as its relay and "
    "be validated by the runner's CA",
    # §7.1
    "order and repeated names MUST be preserved": "needs an upstream that echoes headers; "
    "tests/e2e of Gate check it through real engines",
    "receivers MUST NOT let them change how the body is delimited": "needs an upstream that "
    "echoes what it received",
    "MUST NOT forward the credentials its client presented": "the target as requester: it "
    "would have to send the runner a request",
    # §7.2
    "A requester that has read the response's `end` MUST treat the exchange as complete": "the "
    "target as requester",
    "A requester MUST send its `end` without waiting for any part of the response": "the "
    "target as requester",
    # §7.3
    "MUST be reported to the HTTP client as an error, never as a truncated success": "the "
    "target as requester, seen by its HTTP client: Gate's tests/e2e/test_peer_wire.py",
    "When the response head has already been forwarded, the requesting node MUST abort": "the "
    "target as requester, seen by its HTTP client",
    "A responder's `error` MUST likewise be reported to the client": "the target as "
    "requester, seen by its HTTP client",
    # §7.4
    "and MUST NOT treat `client_addr` as authenticated": "what a node trusts is not visible "
    "on the wire",
    # §7.5
    "The requesting node MUST pass such a response to its client as it is": "the target as "
    "requester, seen by its HTTP client",
    # §8
    "A sender MUST NOT rely on an older peer acting on a field it added.": "a design rule "
    "for senders, not a behaviour on the wire",
    "so a sender MUST NOT send any of them unless the version in use": _SENDER,
    # §9
    "A sender MUST use the most specific code in this table that fits.": "every case that "
    "expects an error names the one code that fits",
    "Code 104 is retired and MUST NOT be sent.": _SENDER,
}
