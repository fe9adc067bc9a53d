"""The relay's Cloudflare DNS backend against a scripted loopback server that follows
Cloudflare's documented API (tests/services/cloudflare_api.py): no real Cloudflare is
reachable here. A relay process with this backend: tests/e2e/test_relay_dns.py."""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio

from gate.errors import ConfigError
from gate.protocol import ActivateDomain, DnsChallenge, DnsChallengeResponse
from gate.relay_config import load_relay_config
from gate.services.engines.client import UpstreamClient
from gate.services.relay.control import RelayControlServer
from gate.services.relay.dns.backend import DnsError
from gate.services.relay.dns.challenges import ChallengeRecords
from gate.services.relay.dns.cloudflare import CloudflareBackend
from gate.services.relay.registry import NameRegistry
from tests.services.cloudflare_api import COMMENT, TOKEN, ZONE, FakeCloudflare

from .test_relay import DOMAIN, new_node

VALUES = [c * 43 for c in "abcdefgh"]


@pytest.fixture
def cloudflare():
    with FakeCloudflare() as fake:
        yield fake


@pytest.fixture
async def backend(cloudflare):
    async with aclosing(UpstreamClient()) as client:
        yield CloudflareBackend(
            zone_id=ZONE,
            token=TOKEN,
            client=client,
            comment=COMMENT,
            api_base=cloudflare.api_base,
            attempts=3,
            backoff=0.05,
        )


def txt(cloudflare: FakeCloudflare, name: str) -> list[str]:
    return sorted(r["content"] for r in cloudflare.records.values() if r["name"] == name)


async def test_create_and_delete_each_record_by_its_id(backend, cloudflare):
    name = f"_acme-challenge.{new_node()}.{DOMAIN}"
    first = await backend.publish_txt(name, VALUES[0])
    second = await backend.publish_txt(name, VALUES[1])
    assert txt(cloudflare, name) == VALUES[:2]
    created = cloudflare.records[first.handle]
    assert (created["ttl"], created["comment"]) == (60, COMMENT)
    await backend.remove_txt(first)
    assert txt(cloudflare, name) == VALUES[1:2]
    await backend.remove_txt(second)
    await backend.remove_txt(second)  # 404, already gone: not an error
    assert cloudflare.records == {}
    assert [(m, p) for m, p, _ in cloudflare.requests] == [
        ("POST", f"/client/v4/zones/{ZONE}/dns_records"),
        ("POST", f"/client/v4/zones/{ZONE}/dns_records"),
        ("DELETE", f"/client/v4/zones/{ZONE}/dns_records/{first.handle}"),
        ("DELETE", f"/client/v4/zones/{ZONE}/dns_records/{second.handle}"),
        ("DELETE", f"/client/v4/zones/{ZONE}/dns_records/{second.handle}"),
    ]


async def test_leftovers_of_this_relay_are_listed_page_by_page_and_deleted(backend, cloudflare):
    cloudflare.max_per_page = 2  # three pages of this relay's records
    for i in range(5):
        await backend.publish_txt(f"_acme-challenge.n{i}.{DOMAIN}", VALUES[i])
    theirs = await CloudflareBackend(
        zone_id=ZONE,
        token=TOKEN,
        client=backend._client,
        comment="gate relay another",
        api_base=cloudflare.api_base,
    ).publish_txt(f"_acme-challenge.x.{DOMAIN}", VALUES[6])
    assert await backend.remove_leftovers() == 5
    assert list(cloudflare.records) == [theirs.handle]  # another relay's record stays
    lists = [q for m, _, q in cloudflare.requests if m == "GET"]
    assert [q["page"] for q in lists] == ["1", "2", "3"]
    assert lists[0]["type"] == "TXT" and lists[0]["comment.exact"] == COMMENT


async def test_403_is_a_clear_error_and_not_retried(backend, cloudflare):
    cloudflare.script.append(("POST", 403, {}, False))
    with pytest.raises(DnsError, match=r"HTTP 403: .*Zone: DNS: Edit"):
        await backend.publish_txt(f"_acme-challenge.n.{DOMAIN}", VALUES[0])
    assert cloudflare.count("POST") == 1 and cloudflare.records == {}


async def test_a_wrong_token_is_refused_the_same_way(cloudflare):
    async with aclosing(UpstreamClient()) as client:
        wrong = CloudflareBackend(
            zone_id=ZONE, token="nope", client=client, comment=COMMENT, api_base=cloudflare.api_base
        )
        with pytest.raises(DnsError, match=r"HTTP 403: Authentication error \(10000\)"):
            await wrong.publish_txt(f"_acme-challenge.n.{DOMAIN}", VALUES[0])


async def test_429_waits_its_retry_after_and_tries_again(backend, cloudflare):
    cloudflare.script.append(("POST", 429, {"retry-after": "1"}, False))
    cloudflare.script.append(("DELETE", 429, {"retry-after": "1"}, False))
    started = trio.current_time()
    record = await backend.publish_txt(f"_acme-challenge.n.{DOMAIN}", VALUES[0])
    await backend.remove_txt(record)
    assert trio.current_time() - started >= 2.0  # waited as told, twice
    assert (cloudflare.count("POST"), cloudflare.count("DELETE")) == (2, 2)
    assert cloudflare.records == {}


async def test_5xx_is_retried_with_backoff_and_bounded(backend, cloudflare):
    cloudflare.script += [("DELETE", 502, {}, False), ("DELETE", 503, {}, False)]
    record = await backend.publish_txt(f"_acme-challenge.n.{DOMAIN}", VALUES[0])
    await backend.remove_txt(record)  # the third try passes
    assert cloudflare.count("DELETE") == 3 and cloudflare.records == {}

    cloudflare.script += [("POST", 500, {}, False)] * 3
    with pytest.raises(DnsError, match="gave up after 3 tries"):
        await backend.publish_txt(f"_acme-challenge.n.{DOMAIN}", VALUES[1])
    assert cloudflare.count("POST") == 1 + 3 and cloudflare.records == {}


async def test_a_lost_answer_is_not_created_twice(backend, cloudflare):
    name = f"_acme-challenge.n.{DOMAIN}"
    # Created, but the answer was a 502: the retry finds it instead of making another.
    cloudflare.script.append(("POST", 502, {}, True))
    record = await backend.publish_txt(name, VALUES[0])
    assert list(cloudflare.records) == [record.handle] and cloudflare.count("POST") == 1
    assert cloudflare.count("GET") == 1  # the look before trying again


async def eventually_empty(cloudflare: FakeCloudflare, records: ChallengeRecords) -> None:
    """Nothing at Cloudflare, nor on the relay's list (its DELETE answered)."""
    with trio.fail_after(5):
        while cloudflare.records or len(records):  # noqa: ASYNC110 (the fake's thread)
            await trio.sleep(0.02)


async def test_a_publish_that_fails_or_is_cut_short_leaves_nothing(backend, cloudflare):
    node = new_node()
    name = f"_acme-challenge.{node}.{DOMAIN}"
    async with trio.open_nursery() as nursery:
        records = ChallengeRecords(backend, lifetime=600, per_minute=6)
        await nursery.start(records.run)

        # Every try failed, the last after creating the record: it is found and deleted.
        cloudflare.script += [("POST", 502, {}, False)] * 2 + [("POST", 502, {}, True)]
        with pytest.raises(DnsError, match="gave up after 3 tries"):
            await records.publish(node, name, VALUES[0])
        await eventually_empty(cloudflare, records)

        # Cut short (the node's stream ended) after Cloudflare created it, before the
        # answer: found by name and value, and deleted all the same.
        cloudflare.post_delay = 0.5
        with trio.move_on_after(0.2) as cut:
            await records.publish(node, name, VALUES[1])
        assert cut.cancelled_caught
        await eventually_empty(cloudflare, records)
        assert cloudflare.count("DELETE") == 2

        # Released while its publish was under way (the node left): gone once made.
        async with trio.open_nursery() as publishing:
            publishing.start_soon(records.publish, node, name, VALUES[2])
            await trio.sleep(0.2)
            records.release(node)
        assert records.outcomes["published"] == 1
        await eventually_empty(cloudflare, records)
        nursery.cancel_scope.cancel()


async def test_a_challenge_published_at_start_is_not_taken_for_a_leftover(backend, cloudflare):
    """At start the relay deletes the records of its comment that a crash left; a node's
    record published meanwhile carries the same comment, so its publish waits for that."""
    leftover = await backend.publish_txt(f"_acme-challenge.old.{DOMAIN}", VALUES[0])
    cloudflare.list_delay = 0.5  # the listing is made after the node's request arrived
    node = new_node()
    name = f"_acme-challenge.{node}.{DOMAIN}"
    async with trio.open_nursery() as nursery:
        records = ChallengeRecords(backend, lifetime=600, per_minute=6)
        await nursery.start(records.run)
        await records.publish(node, name, VALUES[1])
        assert leftover.handle not in cloudflare.records
        assert txt(cloudflare, name) == VALUES[1:2]
        nursery.cancel_scope.cancel()


async def test_a_nodes_challenge_through_cloudflare_until_it_activates(
    backend, cloudflare, tmp_path
):
    registry = NameRegistry.open(tmp_path / "relay.db")
    async with trio.open_nursery() as nursery:
        records = ChallengeRecords(backend, lifetime=600, per_minute=6)
        await nursery.start(records.run)
        server = RelayControlServer(DOMAIN, registry, records)
        node = new_node()
        name = f"_acme-challenge.{node}.{DOMAIN}"
        answer = await server.answer(node, DnsChallenge(domain=name, txt_value=VALUES[0]))
        assert answer == DnsChallengeResponse(ok=True)
        assert txt(cloudflare, name) == VALUES[:1]
        await server.answer(node, ActivateDomain(domain=f"{node}.{DOMAIN}"))
        with trio.fail_after(5):
            while cloudflare.records:  # noqa: ASYNC110 (the fake runs in its own thread)
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    registry.close()


def test_dns_config_layers_and_the_cloudflare_zone_and_token(tmp_path):
    env = {
        "GATE_RELAYD_DOMAIN": DOMAIN,
        "GATE_RELAYD_DNS__BACKEND": "cloudflare",
        "GATE_RELAYD_DNS__ZONE_ID": ZONE,
        "GATE_RELAYD_DNS__API_TOKEN_ENV": "RELAY_CF_TOKEN",
    }
    with pytest.raises(ConfigError, match="RELAY_CF_TOKEN is not set"):
        load_relay_config(None, env=env)
    config = load_relay_config(None, env={**env, "RELAY_CF_TOKEN": TOKEN})
    assert (config.dns.zone_id, config.dns.api_base) == (
        ZONE,
        "https://api.cloudflare.com/client/v4",
    )
    with pytest.raises(ConfigError, match="zone_id: required"):
        load_relay_config(None, env={**env, "GATE_RELAYD_DNS__ZONE_ID": "", "RELAY_CF_TOKEN": "x"})
    file = tmp_path / "relay.toml"
    file.write_text(f'domain = "{DOMAIN}"\n[dns]\nbackend = "route53"\n')
    with pytest.raises(ConfigError, match=r"relay\.toml: dns\.backend: must be one of"):
        load_relay_config(file, env={})
    # Defaults, then the file, then the environment, as for every key of relay.toml.
    file.write_text(
        f'domain = "{DOMAIN}"\n[dns]\nbackend = "challtestsrv"\nurl = "http://127.0.0.1:8055"\n'
    )
    dns = load_relay_config(file, env={"GATE_RELAYD_DNS__URL": "http://127.0.0.1:9055"}).dns
    assert (dns.backend, dns.url, dns.record_lifetime, dns.challenges_per_minute) == (
        "challtestsrv",
        "http://127.0.0.1:9055",
        600.0,
        6,
    )
    file.write_text(f'domain = "{DOMAIN}"\n[dns]\nbackend = "challtestsrv"\nurl = 8055\n')
    with pytest.raises(ConfigError, match=r"dns\.url: Expected `?str"):  # strict in a file
        load_relay_config(file, env={})
