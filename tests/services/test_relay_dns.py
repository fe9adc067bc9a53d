"""The relay's DNS for nodes' ACME DNS-01 challenges, with a real pebble-challtestsrv
(the DNS a pebble CA asks) on loopback random ports: records checked by a real DNS query
to its DNS port. The relay's RelayControl answers are called in-process here; through a
relay process and a node's iroh connection: tests/e2e/test_relay_dns.py."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio

from gate.protocol import (
    ActivateDomain,
    DnsChallenge,
    DnsChallengeResponse,
    ErrorCode,
    RelayError,
)
from gate.services.engines.client import UpstreamClient
from gate.services.relay.control import RelayControlServer
from gate.services.relay.dns.backend import DnsError
from gate.services.relay.dns.challenges import ChallengeRecords
from gate.services.relay.dns.challtestsrv import ChalltestsrvBackend
from gate.services.relay.registry import NameRegistry
from tests.pebble.challtestsrv import Challtestsrv

from .test_relay import DOMAIN, new_node

VALUES = [c * 43 for c in "abcdefgh"]


@pytest.fixture
def challtestsrv():
    with Challtestsrv() as server:
        yield server


async def txt(server: Challtestsrv, name: str) -> list[str]:
    return sorted(await trio.to_thread.run_sync(server.txt, name))


async def test_challtestsrv_backend_keeps_each_value_until_it_is_removed(challtestsrv):
    async with aclosing(UpstreamClient()) as client:
        backend = ChalltestsrvBackend(challtestsrv.url, client)
        name = f"_acme-challenge.{new_node()}.{DOMAIN}"
        first = await backend.publish_txt(name, VALUES[0])
        second = await backend.publish_txt(name, VALUES[1])
        assert await txt(challtestsrv, name) == VALUES[:2]  # DNS-01 allows several
        await backend.remove_txt(first)
        assert await txt(challtestsrv, name) == VALUES[1:2]
        await backend.remove_txt(second)
        assert await txt(challtestsrv, name) == []
        await backend.remove_txt(second)  # already gone: not an error


async def test_challtestsrv_down_is_a_dns_error():
    async with aclosing(UpstreamClient(connect_timeout=2)) as client:
        backend = ChalltestsrvBackend("http://127.0.0.1:9", client)
        with pytest.raises(DnsError, match="challtestsrv /set-txt"):
            await backend.publish_txt(f"_acme-challenge.x.{DOMAIN}", VALUES[0])


@pytest.fixture
async def relay_control(tmp_path, challtestsrv):
    """A RelayControl server with a challtestsrv backend, its removal task running."""
    registry = NameRegistry.open(tmp_path / "relay.db")
    async with aclosing(UpstreamClient()) as client, trio.open_nursery() as nursery:
        records = ChallengeRecords(
            ChalltestsrvBackend(challtestsrv.url, client), lifetime=600, per_minute=6
        )
        await nursery.start(records.run)
        yield RelayControlServer(DOMAIN, registry, records)
        nursery.cancel_scope.cancel()
    registry.close()


async def eventually(check, what: str) -> None:
    with trio.fail_after(5):
        while not await check():  # noqa: ASYNC110 (challtestsrv is another process)
            await trio.sleep(0.05)


async def test_a_nodes_challenge_is_published_until_it_activates_its_name(
    relay_control, challtestsrv
):
    node = new_node()
    name = f"_acme-challenge.{node}.{DOMAIN}"
    for value in VALUES[:2]:
        answer = await relay_control.answer(node, DnsChallenge(domain=name, txt_value=value))
        assert answer == DnsChallengeResponse(ok=True)
    assert await txt(challtestsrv, name) == VALUES[:2]  # published when ok=true came
    assert len(relay_control.challenges) == 2
    await relay_control.answer(node, ActivateDomain(domain=f"{node}.{DOMAIN}"))

    async def gone() -> bool:
        # Both removed: between the two, challtestsrv is cleared and the second set again.
        return len(relay_control.challenges) == 0 and await txt(challtestsrv, name) == []

    await eventually(gone, "records removed after activate_domain")
    assert relay_control.challenges.removed == 2
    assert relay_control.challenges.outcomes["published"] == 2


async def test_a_node_gone_takes_its_records_with_it_and_no_others(relay_control, challtestsrv):
    node, other = new_node(), new_node()
    mine, theirs = (f"_acme-challenge.{n}.{DOMAIN}" for n in (node, other))
    await relay_control.answer(node, DnsChallenge(domain=mine, txt_value=VALUES[0]))
    await relay_control.answer(other, DnsChallenge(domain=theirs, txt_value=VALUES[1]))
    relay_control.challenges.release(node)  # what the service does as its connection ends

    async def gone() -> bool:
        return await txt(challtestsrv, mine) == []

    await eventually(gone, "the node's record removed")
    assert await txt(challtestsrv, theirs) == VALUES[1:2]


async def test_every_record_goes_after_its_lifetime(relay_control, challtestsrv):
    relay_control.challenges.lifetime = 0.5
    node = new_node()
    name = f"_acme-challenge.{node}.{DOMAIN}"
    await relay_control.answer(node, DnsChallenge(domain=name, txt_value=VALUES[0]))
    published = trio.current_time()
    assert await txt(challtestsrv, name) == VALUES[:1]

    async def gone() -> bool:
        return await txt(challtestsrv, name) == []

    await eventually(gone, "the record removed after its lifetime")
    assert trio.current_time() - published >= 0.5


async def test_another_nodes_name_is_unauthorized_and_nothing_is_published(
    relay_control, challtestsrv
):
    node, other = new_node(), new_node()
    theirs = f"_acme-challenge.{other}.{DOMAIN}"
    for domain in (theirs, f"{node}.{DOMAIN}", f"_acme-challenge.{node}.other.test"):
        answer = await relay_control.answer(node, DnsChallenge(domain=domain, txt_value=VALUES[0]))
        assert isinstance(answer, RelayError) and answer.code == ErrorCode.UNAUTHORIZED
    assert await txt(challtestsrv, theirs) == []
    assert len(relay_control.challenges) == 0
    assert relay_control.challenges.outcomes["refused"] == 3


async def test_a_node_past_its_rate_is_rate_limited_and_others_are_not(relay_control, challtestsrv):
    relay_control.challenges.per_minute = 2
    node, other = new_node(), new_node()
    name = f"_acme-challenge.{node}.{DOMAIN}"
    answers = [
        await relay_control.answer(node, DnsChallenge(domain=name, txt_value=value))
        for value in VALUES[:3]
    ]
    assert answers[:2] == [DnsChallengeResponse(ok=True)] * 2
    assert isinstance(answers[2], RelayError) and answers[2].code == ErrorCode.RATE_LIMITED
    assert "retry in 30 s" in answers[2].message  # a token every 30 s at 2 a minute
    assert await txt(challtestsrv, name) == VALUES[:2]  # the refused one was not published
    answer = await relay_control.answer(
        other, DnsChallenge(domain=f"_acme-challenge.{other}.{DOMAIN}", txt_value=VALUES[3])
    )
    assert answer == DnsChallengeResponse(ok=True)
    assert relay_control.challenges.outcomes["rate_limited"] == 1


async def test_a_backend_that_fails_answers_ok_false_with_its_reason(tmp_path):
    registry = NameRegistry.open(tmp_path / "relay.db")
    async with aclosing(UpstreamClient(connect_timeout=2)) as client:
        records = ChallengeRecords(
            ChalltestsrvBackend("http://127.0.0.1:9", client), lifetime=600, per_minute=6
        )
        server = RelayControlServer(DOMAIN, registry, records)
        node = new_node()
        answer = await server.answer(
            node, DnsChallenge(domain=f"_acme-challenge.{node}.{DOMAIN}", txt_value=VALUES[0])
        )
    registry.close()
    assert isinstance(answer, DnsChallengeResponse) and not answer.ok
    assert "challtestsrv" in answer.reason
    assert (records.outcomes["failed"], records.backend_errors, len(records)) == (1, 1, 0)


async def test_without_a_backend_the_answer_is_still_ok_false(tmp_path):
    registry = NameRegistry.open(tmp_path / "relay.db")
    server = RelayControlServer(DOMAIN, registry)
    node = new_node()
    answer = await server.answer(
        node, DnsChallenge(domain=f"_acme-challenge.{node}.{DOMAIN}", txt_value=VALUES[0])
    )
    registry.close()
    assert answer == DnsChallengeResponse(ok=False, reason="this relay publishes no DNS records")
    assert server.challenges.outcomes["refused"] == 1
