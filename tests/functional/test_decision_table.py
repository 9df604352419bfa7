"""admit.lua's and settle.lua's rules as decision tables, on a real redis-server: each row a
situation (the org's and the member's fields as the data model stores them) and what is
expected — the decision and its reason, or where a charge goes. One rule per row, so that a
row that fails names the rule that broke."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from proxy.config import parse_config
from proxy.storage.model import Member, Org
from proxy.storage.store import Store, StoreRefusal
from tests.servers import RedisServer

NOW = 1_800_000_000  # pinned: 2027-01-15 08:00 UTC
PERIOD = datetime.fromtimestamp(NOW, UTC).strftime("%Y-%m")
USD = 10**9
# standard seat: $4 a session, $40 a week (config's defaults)
SEAT_USED = {"s_end": str(NOW + 3600), "s_used": str(4 * USD)}
WEEK_USED = {"w_end": str(NOW + 86400), "w_used": str(40 * USD), "s_end": str(NOW + 3600)}
TEAM_EU = {"plan": "team", "eu_on": "1", "balance": str(100 * USD)}
ENT_EU = {"plan": "enterprise", "eu_on": "1", "consent": "required"}
_ids = itertools.count(1)


@dataclass(frozen=True)
class Row:
    rule: str
    org: dict[str, str]
    member: dict[str, str] = field(default_factory=dict)
    decision: str = "allow"
    mode: str = "included"
    reason: str = ""
    policy: str = "estimate"
    accept: bool = False
    force: bool = False
    max_cost: int = USD
    est_cost: int = USD // 2
    check: dict[str, str] = field(default_factory=dict)  # more fields of the answer


ROWS = [
    Row("the seat allowance left: included", {"plan": "team"}),
    Row(
        "a closed window opens again: included",
        {"plan": "team"},
        {"s_end": str(NOW - 1), "s_used": str(9 * USD)},
        check={"s_used": "0", "s_reset": str(NOW + 18000)},
    ),
    Row(
        "the session used up, extra usage off",
        {"plan": "team", "eu_on": "0"},
        SEAT_USED,
        "deny",
        "",
        "org_level_disabled",
        check={"claim": "five_hour"},
    ),
    Row(
        "the week used up binds before the session",
        {"plan": "team"},
        WEEK_USED,
        "deny",
        "",
        "org_level_disabled",
        check={"claim": "seven_day"},
    ),
    Row("Team, extra usage for everyone: extra usage", TEAM_EU, SEAT_USED, mode="extra_usage"),
    Row(
        "Team, selected members, not this one",
        {**TEAM_EU, "scope": "selected"},
        SEAT_USED,
        "deny",
        "",
        "member_level_disabled",
    ),
    Row(
        "Team, selected members, this one",
        {**TEAM_EU, "scope": "selected"},
        {**SEAT_USED, "eu": "1"},
        mode="extra_usage",
    ),
    Row(
        "Team, the balance is gone",
        {**TEAM_EU, "balance": "0"},
        SEAT_USED,
        "deny",
        "",
        "out_of_credits",
    ),
    Row(
        "Team, the org limit reached this month",
        {**TEAM_EU, "limit": str(10 * USD), "spend_p": PERIOD, "spend": str(10 * USD)},
        SEAT_USED,
        "deny",
        "",
        "org_spend_limit",
    ),
    Row(
        "a monthly counter counts only in its period",
        {**TEAM_EU, "limit": str(10 * USD), "spend_p": "2026-12", "spend": str(10 * USD)},
        SEAT_USED,
        mode="extra_usage",
        check={"org_spend": "0"},
    ),
    Row(
        "Enterprise, consent required and not given",
        ENT_EU,
        SEAT_USED,
        "deny",
        "",
        "consent_required",
    ),
    Row(
        "Enterprise consent by default is required",
        {"plan": "enterprise", "eu_on": "1"},
        SEAT_USED,
        "deny",
        "",
        "consent_required",
        check={"consent": "required"},
    ),
    Row("consent for this request", ENT_EU, SEAT_USED, mode="extra_usage", accept=True),
    Row("consent given once", ENT_EU, {**SEAT_USED, "consent": "1"}, mode="extra_usage"),
    Row(
        "Team consent by default is automatic",
        TEAM_EU,
        SEAT_USED,
        mode="extra_usage",
        check={"consent": "automatic"},
    ),
    Row(
        "Enterprise, a member limit of 0 is extra usage off",
        ENT_EU,
        {**SEAT_USED, "consent": "1", "limit": "0"},
        "deny",
        "",
        "member_level_disabled",
    ),
    Row(
        "Enterprise, the member limit reached",
        ENT_EU,
        {
            **SEAT_USED,
            "consent": "1",
            "limit": str(5 * USD),
            "spend_p": PERIOD,
            "spend": str(5 * USD),
        },
        "deny",
        "",
        "member_spend_limit",
    ),
    Row(
        "Enterprise, an unlimited member under a reached tier limit",
        {**ENT_EU, "tlimit:standard": str(5 * USD)},
        {**SEAT_USED, "consent": "1", "spend_p": PERIOD, "spend": str(5 * USD)},
        "deny",
        "",
        "seat_tier_spend_limit",
    ),
    Row(
        "Enterprise, the org limit under unlimited member and tier",
        {**ENT_EU, "limit": str(5 * USD), "spend_p": PERIOD, "spend": str(5 * USD)},
        {**SEAT_USED, "consent": "1"},
        "deny",
        "",
        "org_spend_limit",
    ),
    Row(
        "strict: a maximum that does not fit is refused",
        ENT_EU,
        {**SEAT_USED, "consent": "1", "limit": str(2 * USD)},
        "deny",
        "",
        "member_spend_limit",
        policy="strict",
        max_cost=3 * USD,
        check={"fits": "0", "eu_remaining": str(2 * USD)},
    ),
    Row(
        "strict: a maximum that fits reserves it whole",
        ENT_EU,
        {**SEAT_USED, "consent": "1", "limit": str(5 * USD)},
        mode="extra_usage",
        policy="strict",
        max_cost=3 * USD,
        check={"amount": str(3 * USD)},
    ),
    Row(
        "estimate: the reservation shrinks to the room left",
        ENT_EU,
        {**SEAT_USED, "consent": "1", "limit": str(USD // 4)},
        mode="extra_usage",
        check={"amount": str(USD // 4)},
    ),
    Row(
        "estimate: what others reserve counts",
        ENT_EU,
        {**SEAT_USED, "consent": "1", "limit": str(USD), "eu_res": str(USD)},
        "deny",
        "",
        "member_spend_limit",
    ),
    Row(
        "none: only spend counts, and nothing is reserved",
        ENT_EU,
        {**SEAT_USED, "consent": "1", "limit": str(USD), "eu_res": str(USD)},
        mode="extra_usage",
        policy="none",
        check={"amount": "0"},
    ),
    Row(
        "a journaled request, extra usage off: included past the seat",
        {"plan": "team", "eu_on": "0"},
        SEAT_USED,
        force=True,
    ),
    Row(
        "a journaled request past a limit: extra usage",
        {**TEAM_EU, "balance": "0"},
        SEAT_USED,
        mode="extra_usage",
        force=True,
        check={"amount": "0"},
    ),
]


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[Store]:
    config = parse_config({"redis": {"url": redis_server.url}}, "<test>", {})
    s = Store(
        aioredis.Redis.from_url(redis_server.url),
        prefix=f"dt{next(_ids)}",
        tiers=config.tiers,
        policy=config.policy,
        owns_client=True,
    )
    s.pinned_now = NOW
    yield s
    await s.close()


async def situation(store: Store, org_fields: dict[str, str], member: dict[str, str]) -> str:
    org = f"org{next(_ids)}"
    k = store.keys(org)
    await store.client.hset(k.org, mapping=org_fields)
    fields = {"tier": "standard", "role": "member", **member}
    await store.client.hset(
        k.members, mapping={Member.field("ann", f): v for f, v in fields.items()}
    )
    return org


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.rule)
async def test_admission_rule(store: Store, row: Row) -> None:
    org = await situation(store, {Org.POLICY: row.policy, **row.org}, row.member)
    a = await store.admit(
        org,
        f"req-{next(_ids)}",
        who="m",
        credential="ann",
        max_cost=row.max_cost,
        est_cost=row.est_cost,
        accept_extra=row.accept,
        force=row.force,
    )
    assert (a["d"], a["mode"], a["reason"]) == (row.decision, row.mode, row.reason)
    if row.decision == "deny":
        assert a["eu_available"] == "0" and a["eu_reason"] == row.reason
    for name, value in row.check.items():
        assert a[name] == value, name


@pytest.mark.parametrize(
    ("org_fields", "member", "code"),
    [
        ({}, {}, "unknown_org"),
        ({"plan": "team", "enabled": "0"}, {}, "org_disabled"),
        ({"plan": "team"}, {"enabled": "0"}, "member_disabled"),
        ({"plan": "team"}, {"tier": "platinum"}, "unknown_tier"),
    ],
)
async def test_who_may_not_ask_is_refused(
    store: Store, org_fields: dict[str, str], member: dict[str, str], code: str
) -> None:
    org = await situation(store, org_fields, member) if org_fields else "nobody"
    with pytest.raises(StoreRefusal) as err:
        await store.admit(org, "r", who="m", credential="ann", max_cost=1, est_cost=1)
    assert err.value.code == code


async def test_an_unknown_member_or_key_is_refused(store: Store) -> None:
    org = await situation(store, {"plan": "team"}, {})
    with pytest.raises(StoreRefusal) as err:
        await store.admit(org, "r1", who="m", credential="bob", max_cost=1, est_cost=1)
    assert err.value.code == "unknown_member"
    with pytest.raises(StoreRefusal) as err:
        await store.admit(org, "r2", who="k", credential="0" * 64, max_cost=1, est_cost=1)
    assert err.value.code == "unknown_key"


async def test_an_expired_reservation_gives_its_room_back(store: Store) -> None:
    """Reclaim: a reservation past its TTL (a crashed proxy's) no longer holds the limit."""
    org = await situation(store, ENT_EU, {**SEAT_USED, "consent": "1", "limit": str(USD)})
    first = await store.admit(org, "held", who="m", credential="ann", max_cost=USD, est_cost=USD)
    assert first["mode"] == "extra_usage" and first["amount"] == str(USD)
    blocked = await store.admit(org, "next", who="m", credential="ann", max_cost=1, est_cost=1)
    assert blocked["reason"] == "member_spend_limit"
    store.pinned_now = NOW + store.policy.reservation_ttl_s + 1
    again = await store.admit(org, "later", who="m", credential="ann", max_cost=1, est_cost=1)
    assert again["mode"] == "extra_usage"
    assert (await store.member_fields(org, "ann", ["eu_res"]))["eu_res"] == "1"


@dataclass(frozen=True)
class SettleRow:
    rule: str
    org: dict[str, str]
    member: dict[str, str]
    cost: int
    counters: dict[str, int]  # member fields (or "org:<field>") after the settlement
    result: dict[str, str] = field(default_factory=dict)
    later: int = 0  # seconds between the admission and the settlement


SETTLE_ROWS = [
    SettleRow(
        "included: both open windows and the month's included usage",
        {"plan": "team"},
        {"s_end": str(NOW + 60), "s_used": "7", "w_end": str(NOW + 600), "w_used": "9"},
        100,
        {"s_used": 107, "w_used": 109, "inc": 100},
        {"mode": "included", "balance": "0", "overshoot": "0"},
    ),
    SettleRow(
        "extra usage on Team: member, tier and org month, and the balance",
        {**TEAM_EU, "balance": str(10 * USD)},
        SEAT_USED,
        3 * USD,
        {"spend": 3 * USD, "eu_res": 0, "org:spend": 3 * USD, "org:balance": 7 * USD},
        {"mode": "extra_usage", "balance": str(7 * USD), "overshoot": str(3 * USD - USD // 2)},
    ),
    SettleRow(
        "extra usage on Enterprise: no balance",
        ENT_EU,
        {**SEAT_USED, "consent": "1"},
        USD,
        {"spend": USD, "org:tspend:standard": USD},
        {"mode": "extra_usage", "balance": "", "overshoot": str(USD // 2)},
    ),
    SettleRow(
        "auto-reload asked for when the balance falls to its threshold",
        {
            **TEAM_EU,
            "balance": str(2 * USD),
            "ar_on": "1",
            "ar_threshold": str(USD),
            "ar_amount": str(5 * USD),
        },
        SEAT_USED,
        USD,
        {"org:balance": USD},
        {"reload_amount": str(5 * USD)},
    ),
    SettleRow(
        "a reservation reclaimed meanwhile still settles, all overshoot",
        ENT_EU,
        {**SEAT_USED, "consent": "1"},
        USD,
        {"spend": USD, "eu_res": 0},
        {"expired": "1", "overshoot": str(USD)},
        later=10_000,
    ),
]


@pytest.mark.parametrize("row", SETTLE_ROWS, ids=lambda r: r.rule)
async def test_settlement_rule(store: Store, row: SettleRow) -> None:
    org = await situation(store, row.org, row.member)
    rid = f"req-{next(_ids)}"
    await store.admit(org, rid, who="m", credential="ann", max_cost=USD, est_cost=USD // 2)
    store.pinned_now = NOW + row.later
    if row.later:  # another admission reclaims what is past its TTL
        await store.admit(org, "other", who="m", credential="ann", max_cost=1, est_cost=1)
    usage = {"input_tokens": 1, "output_tokens": 1}
    reply, _ = store.settle(org, rid, cost=row.cost, model="claude-sonnet-4-5", usage=usage)
    result = await reply
    for name, value in row.result.items():
        assert result[name] == value, name
    org_fields = await store.org_settings(org)
    member = await store.member_fields(org, "ann", [n for n in row.counters if ":" not in n])
    for name, value in row.counters.items():
        got = org_fields.get(name[4:], "0") if name.startswith("org:") else member.get(name, "0")
        assert int(got) == value, name
    assert [e["cost"] for e in await store.ledger(org)] == [str(row.cost)]
    # replayed: the same result, nothing charged twice
    again, _ = store.settle(org, rid, cost=row.cost, model="claude-sonnet-4-5", usage=usage)
    assert (await again)["replay"] == "1"
    assert len(await store.ledger(org)) == 1


async def test_a_released_reservation_cannot_be_settled(store: Store) -> None:
    org = await situation(store, {"plan": "team"}, {})
    await store.admit(org, "r", who="m", credential="ann", max_cost=1, est_cost=1)
    assert (await store.release(org, "r"))["released"] == "0"
    reply, _ = store.settle(org, "r", cost=5, model="m", usage={})
    with pytest.raises(StoreRefusal) as err:
        await reply
    assert err.value.code == "released"
    with pytest.raises(StoreRefusal) as err:
        await (store.settle(org, "never", cost=5, model="m", usage={}))[0]
    assert err.value.code == "unknown_reservation"
