"""Every script on a real 3-master Redis Cluster: orgs spread over slots and nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.crc import key_slot

from proxy.storage.functions import Library
from proxy.storage.keys import org_keys
from proxy.storage.pipelining import ClusterPipeliner
from proxy.storage.scripts import WHOIS
from tests.cluster import RedisCluster
from tests.conftest import SERVICE, ProxyFactory, message
from tests.functional.helpers import eventually, ledger_sum, member_counters
from tests.functional.test_extra_usage import exhaust_seat, settings


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    c = RedisCluster().start()
    yield c
    c.cleanup()


def node_of(cluster: RedisCluster, key: str) -> int:
    slot = key_slot(key.encode())
    with redis.Redis(port=cluster.nodes[0].port) as c:
        for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                port = master[1]
                return [n.port for n in cluster.nodes].index(port)
    raise AssertionError("slot not served")


async def test_every_script_runs_on_a_cluster_and_survives_a_restarted_node(
    cluster: RedisCluster, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(redis={"url": cluster.url, "cluster": True})
    orgs, keys = [], {}
    for org in ("acme", "globex", "initech", "umbrella", "hooli", "stark"):
        status, _ = await proxy.admin("POST", "/admin/v1/orgs", json={"id": org, "plan": "team"})
        assert status == 201
        orgs.append(org)
        keys[org] = await proxy.member(org, "ann")
    nodes = {node_of(cluster, org_keys("eup", o).org) for o in orgs}
    assert len(nodes) >= 2  # the orgs live on different masters
    for org in orgs:
        for stream in (False, True):
            status, _, body = await proxy.post(keys[org], message(stream=stream))
            assert status == 200, body
    # extra usage, purchase, auto-reload, check API, release: every script
    org = orgs[0]
    proxy.store.pinned_now = 1_800_000_000
    await exhaust_seat(proxy.store, org, "ann")
    await settings(
        proxy,
        org,
        enabled=True,
        auto_reload={"enabled": True, "threshold": "1.00", "amount": "1.00"},
    )
    status, _ = await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        json={"amount": "1.50", "idempotency_key": "c1"},
    )
    assert status == 201
    status, _, _ = await proxy.post(
        keys[org],
        message(max_tokens=40000),
        headers={"x-mock-output-tokens": "40000", "x-mock-input-tokens": "0"},
    )
    assert status == 200

    # the auto-reload is asked for once the settlement's reply is back, a moment after the
    # answer (the calls are pipelined on a Cluster too)
    async def reloaded() -> bool:
        balance = int((await proxy.store.org_settings(org))["balance"])
        return balance == 1_500_000_000 - 600_000_000 + 1_000_000_000

    await proxy.settled()
    await eventually(reloaded)
    auth = {"authorization": f"Bearer {SERVICE}"}
    body = {
        "org_id": org,
        "member_id": "ann",
        "model": "claude-sonnet-4-5",
        "input_tokens": 10,
        "max_tokens": 10,
        "request_id": "cl-1",
    }
    async with proxy.session.post(proxy.url + "/v1/usage/check", json=body, headers=auth) as r:
        rsv = (await r.json())["reservation_id"]
    async with proxy.session.post(
        proxy.url + "/v1/usage/release", json={"reservation_id": rsv}, headers=auth
    ) as r:
        assert r.status == 200
    proxy.store.pinned_now = 0

    # restart the master that holds the last org: its script cache is gone (NOSCRIPT)
    victim = orgs[-1]
    cluster.restart(node_of(cluster, org_keys("eup", victim).org))
    for _ in range(50):
        status, _, _ = await proxy.post(keys[victim], message())
        if status == 200:
            break
    assert status == 200
    counters = await member_counters(proxy.store, victim, "ann")
    assert counters["inc"] == await ledger_sum(proxy.store, victim)

    # every master loses the library (restarted without persistence, flushed): the first
    # call that reaches each loads it again, on every master, and goes through once
    library = proxy.store.library
    assert await library.libraries() == [library.name]
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as c:
            c.function_flush()
    assert await library.libraries() == []
    before = {org: len(await proxy.store.ledger(org)) for org in orgs}
    for org in orgs:
        status, _, body = await proxy.post(keys[org], message())
        assert status == 200, body
    await proxy.settled()
    assert await library.libraries() == [library.name]
    for org in orgs:
        assert len(await proxy.store.ledger(org)) == before[org] + 1
    for org in orgs[1:]:  # (the first one's member has extra usage too)
        counters = await member_counters(proxy.store, org, "ann")
        assert counters["inc"] == await ledger_sum(proxy.store, org)


async def test_calls_are_pipelined_per_master_and_follow_a_moved_slot(
    cluster: RedisCluster, proxy_factory: ProxyFactory
) -> None:
    """One multiplexed connection per master; a call sent to a master that no longer serves
    its slot (MOVED) is made again where it lives, and charged once."""
    proxy = await proxy_factory(redis={"url": cluster.url, "cluster": True})
    pipeliner = proxy.store.pipeliner
    assert isinstance(pipeliner, ClusterPipeliner)
    org = "moved-co"
    status, _ = await proxy.admin("POST", "/admin/v1/orgs", json={"id": org, "plan": "team"})
    assert status == 201
    key = await proxy.member(org, "ann")
    results = await asyncio.gather(*(proxy.post(key, message()) for _ in range(20)))
    assert [r[0] for r in results] == [200] * 20
    assert pipeliner.writes >= 1 and len(pipeliner.nodes) >= 1
    # the map goes stale: the org's calls are routed to another master, which answers MOVED
    home = node_of(cluster, org_keys("eup", org).org)
    other = cluster.nodes[(home + 1) % len(cluster.nodes)]
    client = proxy.store.client
    wrong = client.get_node(host="127.0.0.1", port=other.port)
    real = client.get_node_from_key
    client.get_node_from_key = lambda key, replica=False: wrong  # type: ignore[method-assign]
    try:
        status, _, body = await proxy.post(key, message())
    finally:
        client.get_node_from_key = real  # type: ignore[method-assign]
    assert status == 200, body
    await proxy.settled()  # the settlement's reply is handled after the answer
    assert pipeliner.redirected >= 2  # the admission and the settlement
    # a client that has not met the cluster yet: its first calls go through redis-py, which
    # learns the map; the next are pipelined
    client = AsyncCluster.from_url(cluster.url, protocol=2)
    library = Library(client)
    whois = library.scripts["whois"]
    fresh = ClusterPipeliner(client, library)
    try:
        keys = WHOIS.keys_of(org_keys("eup", org))
        assert fresh._node(keys[0]) is None
        assert await fresh.call(whois, keys, ("k", "0" * 64))
        assert fresh._node(keys[0]) is not None
        assert await fresh.call(whois, keys, ("k", "0" * 64))
        assert fresh.writes == 1
    finally:
        await fresh.close()
        await fresh.client.aclose()
    await proxy.settled()
    assert len(await proxy.store.ledger(org)) == 21
    counters = await member_counters(proxy.store, org, "ann")
    assert counters["inc"] == await ledger_sum(proxy.store, org)
