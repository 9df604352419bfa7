"""strict never passes a limit: server tools are inside the bound (web search by its
max_uses, refused without one), and a request longer than reservation_ttl_s keeps its
reservation (a lease renewed while it runs)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from proxy.http.appkeys import METER
from tests.conftest import SERVICE, Proxy, ProxyFactory, message
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
    assert "a web search tool without max_uses has none" in doc["error"]["message"]
    assert "give every web search tool a max_uses" in doc["error"]["message"]
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


def checked(t: dict[str, Any], request_id: str, org: str, tools: list[Any]) -> dict[str, Any]:
    return {
        "org_id": org,
        "member_id": "m0",
        "model": "claude-sonnet-4-5",
        "input_tokens": 1,
        "max_tokens": 1,
        "request_id": request_id,
        "tools": tools,
    }


async def test_the_check_api_declares_server_tools_and_strict_holds_through_it(
    proxy: Proxy,
) -> None:
    """The check API's tools count in the reservation: 40 reservations of 5 web searches
    each ($0.05) on a $0.10 limit, each settled with its searches — at most the limit is
    spent (the issue's run spent $2.07); a web search without max_uses is refused under
    strict, as through the proxy."""
    org, _ = await strict_org(proxy, "0.10")
    auth = {"authorization": f"Bearer {SERVICE}"}
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}

    async def check_and_settle(i: int) -> bool:
        async with proxy.session.post(
            proxy.url + "/v1/usage/check", json=checked({}, f"s-{i}", org, [search]), headers=auth
        ) as r:
            doc = await r.json()
            assert r.status == 200, doc
        if doc["decision"] != "allow":
            return False
        usage = {
            "input_tokens": 1,
            "output_tokens": 1,
            "server_tool_use": {"web_search_requests": 5},
        }
        async with proxy.session.post(
            proxy.url + "/v1/usage/settle",
            json={"reservation_id": doc["reservation_id"], "usage": usage},
            headers=auth,
        ) as r:
            assert r.status == 200, await r.text()
        return True

    allowed = await asyncio.gather(*(check_and_settle(i) for i in range(40)))
    spent = await ledger_sum(proxy.store, org, mode="extra_usage")
    assert spent <= 100_000_000 and allowed.count(True) == 1
    async with proxy.session.post(
        proxy.url + "/v1/usage/check",
        json=checked({}, "unbounded", org, [{"type": "web_search_20250305"}]),
        headers=auth,
    ) as r:
        assert r.status == 400 and "without max_uses" in (await r.json())["error"]["message"]


async def test_a_check_api_reservation_renewed_outlives_its_ttl(
    proxy_factory: ProxyFactory,
) -> None:
    """A check API reservation renewed past reservation_ttl_s keeps its room: another
    member's admission does not reclaim it; settled, renew answers renewed false."""
    proxy = await proxy_factory(policy={"reservation_ttl_s": 2}, upstream={"read_timeout_s": 1})
    org, _ = await strict_org(proxy, "0.50")
    auth = {"authorization": f"Bearer {SERVICE}"}
    body = {**checked({}, "long-1", org, []), "max_tokens": 1000}
    async with proxy.session.post(proxy.url + "/v1/usage/check", json=body, headers=auth) as r:
        doc = await r.json()
        assert doc["decision"] == "allow", doc
    rsv = {"reservation_id": doc["reservation_id"]}
    held = (await member_counters(proxy.store, org, "m0"))["eu_res"]
    assert held > 0
    for _ in range(3):  # 3 s in all, past the 2 s TTL, renewed each second
        await asyncio.sleep(1)
        async with proxy.session.post(proxy.url + "/v1/usage/renew", json=rsv, headers=auth) as r:
            renewed = await r.json()
            assert r.status == 200 and renewed["renewed"] is True, renewed
    # an admission (which reclaims what has expired) finds it still held
    async with proxy.session.post(
        proxy.url + "/v1/usage/check",
        json={**checked({}, "probe", org, []), "reserve": False},
        headers=auth,
    ) as r:
        assert r.status == 200
    assert (await member_counters(proxy.store, org, "m0"))["eu_res"] == held
    usage = {"input_tokens": 1, "output_tokens": 10}
    async with proxy.session.post(
        proxy.url + "/v1/usage/settle", json={**rsv, "usage": usage}, headers=auth
    ) as r:
        assert r.status == 200
    async with proxy.session.post(proxy.url + "/v1/usage/renew", json=rsv, headers=auth) as r:
        assert (await r.json())["renewed"] is False


async def test_documents_and_images_by_url_are_refused_under_strict_only(
    proxy_factory: ProxyFactory,
) -> None:
    """The API fetches a URL input itself and bills it as input: strict cannot bound it and
    refuses it on extra usage, saying why; under estimate it runs."""
    proxy = await proxy_factory()
    org, (key,) = await strict_org(proxy, "10.00")
    body = message(max_tokens=10)
    body["messages"] = [
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}],
        }
    ]
    status, _, raw = await proxy.post(key, body)
    assert status == 400 and b"a document or image given by URL has none" in raw
    await settings(proxy, org, reservation_policy="estimate")
    assert (await proxy.post(key, body))[0] == 200
