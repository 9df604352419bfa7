from __future__ import annotations

import calendar
import re
from typing import Any

import pytest

from proxy.core.money import format_usd
from proxy.storage.store import Store
from tests.conftest import Proxy, ProxyFactory, message
from tests.functional.drivers import OUT, CheckDriver, Driver, ProxyDriver
from tests.functional.helpers import ledger_sum

NOW = calendar.timegm((2026, 11, 20, 12, 0, 0))
DEC_1 = calendar.timegm((2026, 12, 1, 0, 0, 0))


@pytest.fixture(params=["redis-server", "in-process"])
async def proxy(request: pytest.FixtureRequest, proxy_factory: ProxyFactory) -> Proxy:
    """The scenarios run on a real redis-server and on the demo's in-process Redis."""
    return await proxy_factory(backend=request.param)


@pytest.fixture(params=["proxy", "check"])
def driver(request: pytest.FixtureRequest, proxy: Proxy) -> Driver:
    proxy.store.pinned_now = NOW
    return ProxyDriver(proxy) if request.param == "proxy" else CheckDriver(proxy)


async def exhaust_seat(store: Store, org: str, member: str) -> None:
    """Put the member at their seat limit: both windows open and used up."""
    k = store.keys(org)
    now = store.pinned_now
    await store.client.hset(
        k.members,
        mapping={
            f"{member}|s_end": now + 18000,
            f"{member}|s_used": 10**12,
            f"{member}|w_end": now + 604800,
            f"{member}|w_used": 10**12,
        },
    )


async def settings(proxy: Proxy, org: str, token: str | None = None, **doc: Any) -> Any:
    kwargs = {"token": token} if token else {}
    status, body = await proxy.admin(
        "PATCH", f"/admin/v1/orgs/{org}/extra-usage", json=doc, **kwargs
    )
    assert status == 200, body
    return body


async def enterprise(proxy: Proxy, driver: Driver, *members: str, **doc: Any) -> str:
    org = await proxy.org("enterprise")
    await settings(
        proxy, org, enabled=True, member_consent="automatic", reservation_policy="strict", **doc
    )
    for m in members:
        await driver.member(org, m)
        await exhaust_seat(proxy.store, org, m)
    return org


async def spend_of(store: Store, org: str, member: str) -> int:
    return int((await store.member_fields(org, member, ("spend",))).get("spend", "0"))


# -- Enterprise -----------------------------------------------------------------------------


async def test_tier_limit_binds(proxy: Proxy, driver: Driver) -> None:
    org = await enterprise(proxy, driver, "ann")
    status, _ = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/tiers/standard", json={"monthly_limit": "1.00"}
    )
    assert status == 200
    for _ in range(3):
        assert (await driver.spend(org, "ann", 20_000)).allowed  # $0.30 each
    out = await driver.spend(org, "ann", 20_000)
    assert not out.allowed
    assert (out.reason, out.error_type) == ("seat_tier_spend_limit", "billing_error")
    assert "could cost up to $0.30" in out.message
    assert "more than the $0.10 left of the monthly standard seat-tier spend limit" in out.message
    fits = int(re.search(r"a max_tokens of at most (\d+) would fit", out.message)[1])  # type: ignore[index]
    # the proxy bounds the prompt by the body's bytes; the check API knows it exactly
    assert fits == 6666 if driver.name == "check" else 6500 < fits < 6666
    assert (await driver.spend(org, "ann", fits)).allowed
    assert await spend_of(proxy.store, org, "ann") == (60_000 + fits) * OUT
    assert not (await driver.spend(org, "ann", 2000)).allowed


@pytest.mark.parametrize(
    ("member_limit", "binding"),
    [
        ("0.50", "member_spend_limit"),
        ("2.00", "seat_tier_spend_limit"),
        (None, "seat_tier_spend_limit"),
    ],
)
async def test_member_limit_below_and_above_the_tier(
    proxy: Proxy, driver: Driver, member_limit: str | None, binding: str
) -> None:
    org = await enterprise(proxy, driver, "bo")
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/tiers/standard", json={"monthly_limit": "1.00"}
    )
    status, body = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/bo", json={"monthly_limit": member_limit}
    )
    assert status == 200, body
    spent = 0
    while (out := await driver.spend(org, "bo", 10_000)).allowed:  # $0.15 each
        spent += 10_000 * OUT
    assert out.reason == binding
    assert spent == (3 if binding == "member_spend_limit" else 6) * 10_000 * OUT
    assert await spend_of(proxy.store, org, "bo") == spent


async def test_org_limit_across_members(proxy: Proxy, driver: Driver) -> None:
    org = await enterprise(proxy, driver, "cy", "di", monthly_limit="1.00")
    assert (await driver.spend(org, "cy", 30_000)).allowed  # $0.45
    assert (await driver.spend(org, "di", 30_000)).allowed  # $0.45
    out = await driver.spend(org, "di", 30_000)
    assert out.reason == "org_spend_limit"
    out = await driver.spend(org, "cy", 30_000)
    assert out.reason == "org_spend_limit"
    assert (await driver.spend(org, "cy", 6_000)).allowed
    org_spend = int((await proxy.store.org_settings(org))["spend"])
    assert org_spend == (66_000) * OUT == await ledger_sum(proxy.store, org, mode="extra_usage")
    assert org_spend <= 10**9


async def test_unlimited_everywhere(proxy: Proxy, driver: Driver) -> None:
    org = await enterprise(proxy, driver, "ed")
    for _ in range(5):
        out = await driver.spend(org, "ed", 100_000)  # $1.50
        assert out.allowed
        assert out.mode == "extra_usage"
    assert await spend_of(proxy.store, org, "ed") == 500_000 * OUT


async def test_a_zero_limit_blocks_extra_usage(proxy: Proxy, driver: Driver) -> None:
    org = await enterprise(proxy, driver, "fa")
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/fa", json={"monthly_limit": "0"}
    )
    out = await driver.spend(org, "fa", 10)
    assert not out.allowed
    assert (out.reason, out.error_type) == ("member_level_disabled", "rate_limit_error")
    assert "extra-usage-requests" in out.message
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/tiers/standard", json={"monthly_limit": "0"}
    )
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/fa", json={"monthly_limit": None}
    )
    out = await driver.spend(org, "fa", 10)
    assert (out.reason, out.error_type) == ("seat_tier_spend_limit", "billing_error")


async def test_consent_required_then_given(proxy: Proxy, driver: Driver) -> None:
    org = await enterprise(proxy, driver, "gi")
    await settings(proxy, org, member_consent="required")
    out = await driver.spend(org, "gi", 10)
    assert not out.allowed
    assert (out.reason, out.error_type) == ("consent_required", "rate_limit_error")
    assert "POST /v1/usage/me/extra-usage" in out.message
    assert "x-extra-usage: accept" in out.message
    assert (await driver.spend(org, "gi", 10, accept=True)).allowed  # per request
    assert not (await driver.spend(org, "gi", 10)).allowed  # only that request
    key = driver.keys[(org, "gi")]
    async with proxy.session.post(
        proxy.url + "/v1/usage/me/extra-usage", headers={"x-api-key": key}
    ) as r:
        assert r.status == 200
        assert (await r.json())["accepted"] is True
    assert (await driver.spend(org, "gi", 10)).allowed  # from now on
    async with proxy.session.post(
        proxy.url + "/v1/usage/me/extra-usage", json={"accept": False}, headers={"x-api-key": key}
    ) as r:
        assert r.status == 200
    assert not (await driver.spend(org, "gi", 10)).allowed


async def test_org_switched_off(proxy: Proxy, driver: Driver) -> None:
    org = await enterprise(proxy, driver, "ha")
    assert (await driver.spend(org, "ha", 10)).allowed
    await settings(proxy, org, enabled=False)
    out = await driver.spend(org, "ha", 10)
    assert (out.reason, out.error_type) == ("org_level_disabled", "rate_limit_error")


# -- Team -----------------------------------------------------------------------------------


async def test_team_member_from_included_to_spend_limit(proxy: Proxy) -> None:
    proxy.store.pinned_now = NOW
    org = await proxy.org("team")
    owner = await proxy.member(org, "olive", role="primary_owner")
    _, tok = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/olive/admin-tokens")
    token = tok["token"]
    key = await proxy.member(org, "tom")
    assert owner
    await settings(
        proxy,
        org,
        token,
        enabled=True,
        monthly_limit="5.00",
        reservation_policy="strict",
        auto_reload={"enabled": True, "threshold": "2.00", "amount": "3.00"},
    )
    status, body = await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        token=token,
        json={"amount": "4.00", "idempotency_key": "p-1"},
    )
    assert (status, body["balance"]) == (201, "4.00")
    status, body = await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        token=token,
        json={"amount": "4.00", "idempotency_key": "p-1"},
    )
    assert (status, body["balance"], body["replay"]) == (200, "4.00", True)

    async def req(out: int) -> tuple[int, Any, bytes]:
        return await proxy.post(
            key,
            message(max_tokens=out),
            headers={"x-mock-output-tokens": str(out), "x-mock-input-tokens": "0"},
        )

    # included: one big request passes the $4 session allowance (soft limit)
    status, h, _ = await req(300_000)
    assert status == 200
    assert h["anthropic-ratelimit-unified-representative-claim"] == "five_hour"
    # extra usage: $1.50 a request from the prepaid balance
    status, h, _ = await req(100_000)
    assert status == 200
    assert h["anthropic-ratelimit-unified-representative-claim"] == "overage"
    assert h["anthropic-ratelimit-unified-overage-status"] == "allowed"
    s = await proxy.store.org_settings(org)
    assert int(s["balance"]) == 4 * 10**9 - 100_000 * OUT
    # the balance falls to $1.00 <= $2.00: exactly one reload of $3.00, auto-approved
    status, _, _ = await req(100_000)
    assert status == 200
    await proxy.settled()  # the reload is asked for once the charge is answered
    s = await proxy.store.org_settings(org)
    assert int(s["balance"]) == 4 * 10**9 + 3 * 10**9 - 200_000 * OUT
    assert not s.get("ar_pending")
    ledger = await proxy.store.ledger(org)
    assert [r["kind"] for r in ledger].count("reload") == 1
    # $3.00 spent of $5.00: one more $1.50, then a $1.50 request no longer fits
    status, _, _ = await req(100_000)
    assert status == 200
    status, h, body = await req(100_000)
    assert status == 429
    assert h["x-should-retry"] == "false"
    assert b"billing_error" in body
    assert b"monthly organization spend limit" in body
    fits = int(re.search(rb"a max_tokens of at most (\d+) would fit", body)[1])  # type: ignore[index]
    assert 33_000 < fits < 33_333
    # a smaller request fits, and then the limit is reached
    status, _, _ = await req(fits)
    assert status == 200
    status, _, body = await req(10)
    assert status == 429
    assert b"more than the $0.0" in body  # what is left is less than even 10 tokens could cost
    # the owner lowers the limit to what was spent (in whole cents, as an owner types it):
    # the next request sees it reached
    spent = int((await proxy.store.org_settings(org))["spend"])
    await settings(proxy, org, token, monthly_limit=format_usd(spent - spent % 10**7))
    status, h, body = await req(10)
    assert status == 429
    assert b"monthly organization spend limit reached \xc2\xb7 resets 2026-12-01 00:00 UTC" in body
    assert int(h["retry-after"]) == DEC_1 - NOW
    assert h["anthropic-ratelimit-unified-overage-disabled-reason"] == "org_spend_limit"
    assert h["anthropic-ratelimit-unified-overage-status"] == "rejected"
    # counters = ledger, to the nano-dollar
    s = await proxy.store.org_settings(org)
    extra = await ledger_sum(proxy.store, org, mode="extra_usage")
    assert int(s["spend"]) == extra == (300_000 + fits) * OUT
    deltas = sum(int(r["balance_delta"]) for r in await proxy.store.ledger(org))
    assert int(s["balance"]) == deltas == 7 * 10**9 - extra
    assert int(s["eu_res"]) == 0


async def test_team_balance_runs_out(proxy: Proxy) -> None:
    proxy.store.pinned_now = NOW
    org = await proxy.org("team")
    driver = CheckDriver(proxy)
    await driver.member(org, "uli")
    await exhaust_seat(proxy.store, org, "uli")
    await settings(proxy, org, enabled=True, reservation_policy="strict")
    out = await driver.spend(org, "uli", 10)
    assert (out.reason, out.error_type) == ("out_of_credits", "billing_error")
    await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        json={"amount": "0.30", "idempotency_key": "small"},
    )
    assert (await driver.spend(org, "uli", 20_000)).allowed
    out = await driver.spend(org, "uli", 1)
    assert out.reason == "out_of_credits"
    assert int((await proxy.store.org_settings(org))["balance"]) == 0


async def test_team_selected_members(proxy: Proxy) -> None:
    proxy.store.pinned_now = NOW
    org = await proxy.org("team")
    driver = CheckDriver(proxy)
    await driver.member(org, "vi")
    await exhaust_seat(proxy.store, org, "vi")
    await settings(proxy, org, enabled=True, member_scope="selected")
    await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        json={"amount": "10", "idempotency_key": "a"},
    )
    out = await driver.spend(org, "vi", 10)
    assert out.reason == "member_level_disabled"
    status, _ = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/vi", json={"enabled": True}
    )
    assert status == 200
    assert (await driver.spend(org, "vi", 10)).allowed


async def test_usage_me_shows_extra_usage_status(proxy: Proxy) -> None:
    proxy.store.pinned_now = NOW
    org = await proxy.org("enterprise")
    driver = ProxyDriver(proxy)
    await driver.member(org, "kim")
    await exhaust_seat(proxy.store, org, "kim")
    await settings(proxy, org, enabled=True, member_consent="automatic", monthly_limit="10")
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/tiers/standard", json={"monthly_limit": "4.00"}
    )
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/kim", json={"monthly_limit": "2.50"}
    )
    assert (await driver.spend(org, "kim", 20_000)).allowed
    async with proxy.session.get(
        proxy.url + "/v1/usage/me", headers={"x-api-key": driver.keys[(org, "kim")]}
    ) as r:
        doc = await r.json()
    assert doc["mode"] == "extra_usage"
    eu = doc["extra_usage"]
    assert eu["available"] is True
    assert eu["month_to_date_spend"] == "0.30"
    assert eu["limits"] == {"member": "2.50", "seat_tier": "4.00", "organization": "10.00"}
    assert eu["remaining"] == "2.20"
    assert eu["resets_at"] == "2026-12-01T00:00:00Z"
    assert doc["windows"]["seven_day"]["resets_at"] == "2026-11-27T12:00:00Z"


async def test_a_crashed_proxys_reservation_is_reclaimed_by_the_next_admission(
    proxy: Proxy,
) -> None:
    store = proxy.store
    store.pinned_now = NOW
    org = await proxy.org("enterprise")
    await proxy.member(org, "lee")
    await exhaust_seat(store, org, "lee")
    await settings(
        proxy,
        org,
        enabled=True,
        member_consent="automatic",
        monthly_limit="1.00",
        reservation_policy="strict",
    )
    a = await store.admit(
        org, "lost-1", who="m", credential="lee", max_cost=900_000_000, est_cost=900_000_000
    )
    assert (a["mode"], a["amount"]) == ("extra_usage", "900000000")
    # the proxy that made it died: while it is held, the org has $0.10 of room
    b = await store.admit(
        org, "next-1", who="m", credential="lee", max_cost=200_000_000, est_cost=200_000_000
    )
    assert (b["d"], b["reason"]) == ("deny", "org_spend_limit")
    store.pinned_now = NOW + proxy.config.policy.reservation_ttl_s  # the TTL passed
    c = await store.admit(
        org, "next-2", who="m", credential="lee", max_cost=200_000_000, est_cost=200_000_000
    )
    assert c["d"] == "allow"
    assert int((await store.org_settings(org))["eu_res"]) == 200_000_000
    assert (await store.member_fields(org, "lee", ("eu_res",)))["eu_res"] == "200000000"
    # a late settle of the reclaimed one still charges what was used, once
    late = await store.settle(org, "lost-1", cost=50_000_000, model="m", usage={})[0]
    assert (late["expired"], late["overshoot"]) == ("1", "50000000")
    await store.settle(org, "next-2", cost=10, model="m", usage={})[0]
    s = await store.org_settings(org)
    assert (int(s["eu_res"]), int(s["spend"])) == (0, 50_000_010)
