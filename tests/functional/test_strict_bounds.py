"""strict never passes a limit: server tools are inside the bound (web search by its
max_uses, refused without one), and a request longer than reservation_ttl_s keeps its
reservation (a lease renewed while it runs)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from proxy.http.appkeys import METER
from tests.conftest import Proxy, ProxyFactory, message
from tests.functional.helpers import eventually, ledger_sum, member_counters
from tests.functional.test_extra_usage import exhaust_seat, settings

SEARCH = 10_000_000  # nano-USD a web search ($10 per 1,000)


async def strict_org(proxy: Proxy, limit: str, members: int = 1) -> tuple[str, list[str]]:
    """An Enterprise org on strict, each member past their seat, with a member limit."""
    proxy.store.pinned_now = 0
    org = await proxy.org("enterprise")
    keys = []
    for i in range(members):
        m = f"m{i}"
        keys.append(await proxy.member(org, m))
        proxy.store.pinned_now = 1_800_000_000
        await exhaust_seat(proxy.store, org, m)
        proxy.store.pinned_now = 0
        await proxy.store.client.hset(
            proxy.store.keys(org).members,
            mapping={f"{m}|s_end": 4_000_000_000, f"{m}|w_end": 4_000_000_000},
        )
        status, body = await proxy.admin(
            "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/{m}", json={"monthly_limit": limit}
        )
        assert status == 200, body
    await settings(
        proxy, org, enabled=True, member_consent="automatic", reservation_policy="strict"
    )
    return org, keys


def searching(max_uses: int | None) -> dict[str, Any]:
    body = message(max_tokens=10)
    tool: dict[str, Any] = {"type": "web_search_20250305", "name": "web_search"}
    if max_uses is not None:
        tool["max_uses"] = max_uses
    body["tools"] = [tool]
    return body


async def test_web_searches_are_inside_strict_bound_under_concurrency(proxy: Proxy) -> None:
    org, (key,) = await strict_org(proxy, "0.10")
    headers = {"x-mock-web-searches": "5", "x-mock-input-tokens": "1", "x-mock-output-tokens": "1"}
    results = await asyncio.gather(
        *(proxy.post(key, searching(5), headers=headers) for _ in range(40))
    )
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}
    await proxy.settled()
    spent = await ledger_sum(proxy.store, org, mode="extra_usage")
    assert spent <= 100_000_000  # the $0.10 member limit: never passed
    # each request's 5 searches ($0.05) and its tokens fit once: one request ran
    assert statuses.count(200) == 1
    assert spent >= 5 * SEARCH


async def test_a_web_search_without_max_uses_is_refused_on_strict_extra_usage(
    proxy: Proxy,
) -> None:
    org, (key,) = await strict_org(proxy, "10.00")
    status, h, body = await proxy.post(key, searching(None))
    assert status == 400
    assert h["x-should-retry"] == "false"
    doc = orjson.loads(body)
    assert "give its web search tool a max_uses" in doc["error"]["message"]
    await proxy.settled()
    assert await proxy.store.ledger(org) == []
    assert (await member_counters(proxy.store, org, "m0"))["eu_res"] == 0
    status, _, _ = await proxy.post(key, searching(3), headers={"x-mock-web-searches": "3"})
    assert status == 200
    status, _, body = await proxy.post(
        key, {**searching(2), "tools": [{"type": "web_search_20250305", "max_uses": "two"}]}
    )
    assert status == 400
    assert "tools[0].max_uses" in orjson.loads(body)["error"]["message"]


async def test_a_stream_longer_than_the_reservation_ttl_keeps_its_reservation(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(policy={"reservation_ttl_s": 2}, upstream={"read_timeout_s": 1})
    org, keys = await strict_org(proxy, "0.50", members=1)
    meter = proxy.server.app[METER]  # type: ignore[union-attr]
    # $0.30 of output at most: the long stream holds it for 5 s, past the 2 s TTL
    body = message(max_tokens=20_000, stream=True)
    headers = {
        "x-api-key": keys[0],
        "x-mock-events": "10",
        "x-mock-delay-ms": "500",
        "x-mock-output-tokens": "20000",
        "x-mock-input-tokens": "1",
    }
    long = asyncio.ensure_future(
        proxy.session.post(proxy.url + "/v1/messages", json=body, headers=headers)
    )
    k = proxy.store.keys(org)

    async def held() -> bool:
        return int(await proxy.store.client.hget(k.members, "m0|eu_res") or 0) > 0

    await eventually(held)
    await asyncio.sleep(3.5)  # past the TTL: without a lease it would have been reclaimed
    # another request of the same member: admission reclaims what is due — not this one
    status, _, _ = await proxy.post(
        keys[0], message(max_tokens=20_000), headers={"x-mock-output-tokens": "1"}
    )
    assert status == 429  # the room is still held by the running stream
    assert int(await proxy.store.client.hget(k.members, "m0|eu_res") or 0) >= 300_000_000
    resp = await long
    assert resp.status == 200
    await resp.read()
    await proxy.settled()
    spent = await ledger_sum(proxy.store, org, mode="extra_usage")
    assert spent == 1 * 3000 + 20_000 * 15_000 <= 500_000_000
    text = await (await proxy.session.get(proxy.url + "/metrics")).text()
    assert 'eup_reservation_renewals_total{outcome="renewed"}' in text
    assert not meter.journal.active
