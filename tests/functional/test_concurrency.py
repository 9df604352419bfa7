"""500 concurrent extra-usage requests against real Redis, under each reservation policy."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from proxy.storage.model import Op
from tests.conftest import Proxy, ProxyFactory, message
from tests.functional.drivers import OUT
from tests.functional.helpers import ledger_sum
from tests.functional.test_extra_usage import exhaust_seat, settings

N = 500
LIMIT = 4 * 10**9  # $4.00 monthly org limit
BALANCE = 5 * 10**9  # $5.00 prepaid


async def scenario(
    proxy: Proxy, policy: str, *, input_tokens: int, output_tokens: int = 1000, delay_ms: int = 0
) -> dict:
    proxy.store.pinned_now = 0
    org = await proxy.org("team")
    keys = {}
    for m in ("m1", "m2", "m3"):
        keys[m] = await proxy.member(org, m)
        proxy.store.pinned_now = 1_800_000_000
        await exhaust_seat(proxy.store, org, m)
        proxy.store.pinned_now = 0
    await proxy.store.client.hset(
        proxy.store.keys(org).members,
        mapping={f"{m}|{w}_end": 4_000_000_000 for m in keys for w in ("s", "w")},
    )
    await settings(proxy, org, enabled=True, monthly_limit="4.00", reservation_policy=policy)
    await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        json={"amount": "5.00", "idempotency_key": "p"},
    )
    headers = {
        "x-mock-output-tokens": str(output_tokens),
        "x-mock-input-tokens": str(input_tokens),
        "x-mock-delay-ms": str(delay_ms),
        "x-mock-events": "2",
    }
    members = list(keys)
    results = await asyncio.gather(
        *(
            proxy.post(
                keys[members[i % 3]], message(max_tokens=2000, stream=i % 2 == 0), headers=headers
            )
            for i in range(N)
        )
    )
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}
    for status, _, body in results:
        if status == 429:
            assert orjson.loads(body)["error"]["type"] == "billing_error"
    s = await proxy.store.org_settings(org)
    spend = int(s["spend"])
    member_spend = 0
    for m in members:
        member_spend += int((await proxy.store.member_fields(org, m, ("spend",)))["spend"])
    ledger = await proxy.store.ledger(org)
    usage_rows = [r for r in ledger if r["kind"] == "usage"]
    # counters = ledger, to the nano-dollar, whatever the policy
    assert spend == member_spend == await ledger_sum(proxy.store, org, mode="extra_usage")
    assert len(usage_rows) == statuses.count(200)
    assert int(s["balance"]) == BALANCE - spend == sum(int(r["balance_delta"]) for r in ledger)
    assert int(s.get("eu_res", "0")) == 0
    for m in members:
        assert int((await proxy.store.member_fields(org, m, ("eu_res",))).get("eu_res", 0)) == 0
    cost = output_tokens * OUT + input_tokens * 3000
    assert spend == statuses.count(200) * cost
    await proxy.settled()
    async with proxy.session.get(proxy.url + "/metrics") as r:
        text = await r.text()
    m = re.search(rf'eup_reservation_overshoot_usd_total{{policy="{policy}"}} ([0-9.e+-]+)', text)
    overshoot_usd = float(m[1]) if m else 0.0
    reserved = over = 0
    for rec in (await proxy.store.operations(org)).values():
        if rec["s"] == Op.SETTLED:
            reserved += int(rec["reserved"])
            over += max(0, int(rec["cost"]) - int(rec["reserved"]))
    return {
        "spend": spend,
        "admitted": statuses.count(200),
        "overshoot_usd": overshoot_usd,
        "reserved": reserved,
        "over": over,
        "cost": cost,
        "org": org,
        "key": keys["m1"],
        "headers": headers,
    }


@pytest.mark.slow
async def test_strict_never_passes_any_limit_or_the_balance(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory()
    r = await scenario(proxy, "strict", input_tokens=20)
    assert r["spend"] <= LIMIT
    assert r["spend"] <= BALANCE
    assert r["overshoot_usd"] == 0.0
    # what the burst left is usable: sequential requests go on until one maximum no longer fits
    while (await proxy.post(r["key"], message(max_tokens=2000), headers=r["headers"]))[0] == 200:
        pass
    spend = int((await proxy.store.org_settings(r["org"]))["spend"])
    max_cost = proxy.config.prices.max_cost("claude-sonnet-4-5", 200, 2000)
    assert LIMIT - max_cost < spend <= LIMIT


@pytest.mark.slow
async def test_estimate_overshoots_only_by_estimation_and_counts_it(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory()
    # the mock reports 2000 input tokens; the estimate from ~120 bytes is ~30: every request
    # costs more than its reservation
    r = await scenario(proxy, "estimate", input_tokens=2000, output_tokens=2000)
    over = r["over"]
    assert over == r["spend"] - r["reserved"] > 0
    assert abs(r["overshoot_usd"] - over / 1e9) < 1e-6  # the metric counts it
    # reservations themselves never passed the limit: the overshoot is all estimation
    assert r["reserved"] <= LIMIT
    assert 0 < r["spend"] - LIMIT <= over


@pytest.mark.slow
async def test_none_shows_the_check_then_charge_overshoot(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory()
    r = await scenario(proxy, "none", input_tokens=20, delay_ms=30)
    assert r["spend"] > LIMIT  # many were admitted on the same last dollar
    assert r["reserved"] == 0
    assert r["over"] == r["spend"]
    assert abs(r["overshoot_usd"] - r["spend"] / 1e9) < 1e-6
