"""The administration layer's rules, without HTTP: each operation called as a handler calls
it, against a real redis-server; what it refuses leaves the org as it was (the audit log
too), and the refusals are the admin context's errors."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from proxy.admin import audit, members, orgs, requests, settings
from proxy.admin.actors import OPERATOR, member_actor
from proxy.admin.orgs import OrgChange
from proxy.admin.requests import Approval
from proxy.admin.settings import AutoReload, SettingsChange
from proxy.config import PolicyConfig, TierConfig, UpstreamConfig
from proxy.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from proxy.core.vocabulary import Plan, RequestState, Role
from proxy.storage.store import ADMIN_TOKEN, PROXY_KEY, Store
from tests.servers import RedisServer

TIERS = ["standard", "premium"]
_ids = itertools.count(1)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[Store]:
    client = aioredis.Redis.from_url(redis_server.url)
    tiers = {
        t: TierConfig(name=t, session_allowance=4 * 10**9, weekly_allowance=40 * 10**9)
        for t in TIERS
    }
    yield Store(client, prefix="eup", tiers=tiers, policy=PolicyConfig())
    await client.aclose()


async def new_org(store: Store, plan: str) -> str:
    org = f"layer{next(_ids)}-{plan}"
    await orgs.create_org(
        store, OPERATOR, UpstreamConfig(), org=org, plan=plan, name=None, credential=None
    )
    await members.put_member(
        store, OPERATOR, TIERS, org, "pat", role=Role.PRIMARY_OWNER, tier="premium", enabled=True
    )
    await members.put_member(
        store, OPERATOR, TIERS, org, "ann", role=Role.MEMBER, tier="standard", enabled=True
    )
    return org


async def audit_size(store: Store, org: str) -> int:
    return len((await audit.audit(store, OPERATOR, org, 1000))["entries"])


async def test_the_primary_owners_rules(store: Store) -> None:
    org = await new_org(store, Plan.ENTERPRISE)
    owner = member_actor(org, "olly", Role.OWNER)
    await members.put_member(
        store, OPERATOR, TIERS, org, "olly", role=Role.OWNER, tier="standard", enabled=True
    )
    before = await audit_size(store, org)
    with pytest.raises(PermissionDenied, match="primary owner"):
        await members.put_member(
            store, owner, TIERS, org, "ann", role=Role.PRIMARY_OWNER, tier="standard", enabled=True
        )
    with pytest.raises(Conflict, match="cannot be disabled"):
        await members.put_member(
            store,
            OPERATOR,
            TIERS,
            org,
            "pat",
            role=Role.PRIMARY_OWNER,
            tier="premium",
            enabled=False,
        )
    with pytest.raises(Conflict, match="primary owner"):
        await members.delete_member(store, owner, org, "pat")
    assert await audit_size(store, org) == before  # nothing written
    # the primary owner names another: the old one stays an owner
    pat = member_actor(org, "pat", Role.PRIMARY_OWNER)
    view, created = await members.put_member(
        store, pat, TIERS, org, "ann", role=Role.PRIMARY_OWNER, tier="standard", enabled=True
    )
    assert (view["role"], created) == (Role.PRIMARY_OWNER, False)
    assert (await members.get_member(store, OPERATOR, org, "pat"))["role"] == Role.OWNER
    assert await store.primary_owner(org) == "ann"


async def test_who_may_read_and_change(store: Store) -> None:
    org = await new_org(store, Plan.TEAM)
    other = await new_org(store, Plan.TEAM)
    admin = member_actor(org, "adam", Role.ADMIN)
    member = member_actor(org, "ann", Role.MEMBER)
    stranger = member_actor(other, "pat", Role.PRIMARY_OWNER)
    assert (await settings.get_settings(store, admin, TIERS, org))["plan"] == Plan.TEAM
    with pytest.raises(PermissionDenied):
        await settings.patch_settings(store, admin, TIERS, org, SettingsChange(enabled=True))
    with pytest.raises(PermissionDenied):
        await settings.get_settings(store, member, TIERS, org)
    with pytest.raises(NotFound):  # another org's owner does not learn this one exists
        await settings.get_settings(store, stranger, TIERS, org)
    with pytest.raises(PermissionDenied, match="only the operator"):
        await members.issue(
            store, member_actor(org, "pat", Role.PRIMARY_OWNER), org, "ann", ADMIN_TOKEN
        )


async def test_settings_of_the_other_plan_change_nothing(store: Store) -> None:
    org = await new_org(store, Plan.ENTERPRISE)
    before = await settings.get_settings(store, OPERATOR, TIERS, org)
    change = SettingsChange(
        enabled=True, auto_reload=AutoReload(enabled=True), sent=("enabled", "auto_reload")
    )
    with pytest.raises(Conflict, match="only Team organizations"):
        await settings.patch_settings(store, OPERATOR, TIERS, org, change)
    with pytest.raises(Conflict, match="Enterprise setting"):
        team = await new_org(store, Plan.TEAM)
        await settings.put_member_setting(store, OPERATOR, team, "ann", limit=5 * 10**9)
    assert await settings.get_settings(store, OPERATOR, TIERS, org) == before


async def test_auto_reload_needs_its_amounts(store: Store) -> None:
    org = await new_org(store, Plan.TEAM)
    change = SettingsChange(auto_reload=AutoReload(enabled=True), sent=("auto_reload",))
    with pytest.raises(InvalidRequest, match=r"auto_reload\.amount: required"):
        await settings.patch_settings(store, OPERATOR, TIERS, org, change)
    ar = AutoReload(enabled=True, threshold=10**9, amount=5 * 10**9)
    view = await settings.patch_settings(
        store, OPERATOR, TIERS, org, SettingsChange(auto_reload=ar, sent=("auto_reload",))
    )
    assert view["auto_reload"] == {
        "enabled": True,
        "threshold": "1.00",
        "amount": "5.00",
        "pending_reload_id": None,
    }


async def test_a_member_removed_is_gone_and_its_credentials_with_it(store: Store) -> None:
    org = await new_org(store, Plan.TEAM)
    key_id, _ = await members.issue(store, OPERATOR, org, "ann", PROXY_KEY)
    assert (await members.delete_member(store, OPERATOR, org, "ann"))["deleted"]
    with pytest.raises(NotFound, match="key"):
        await members.revoke(store, OPERATOR, org, "zed", PROXY_KEY, key_id)
    with pytest.raises(NotFound, match="member 'nobody' not found"):
        await members.delete_member(store, OPERATOR, org, "nobody")
    with pytest.raises(NotFound):
        await members.issue(store, OPERATOR, org, "nobody", PROXY_KEY)


async def test_refusals_are_the_admin_contexts_errors(store: Store) -> None:
    org = await new_org(store, Plan.ENTERPRISE)
    with pytest.raises(Conflict, match="already exists"):
        await orgs.create_org(
            store, OPERATOR, UpstreamConfig(), org=org, plan=Plan.TEAM, name=None, credential=None
        )
    with pytest.raises(Conflict, match="only Team organizations have prepaid credit"):
        await settings.purchase(store, OPERATOR, org, amount=10**9, key="k1", ahead=True)
    with pytest.raises(NotFound, match="organization 'nope' not found"):
        await orgs.patch_org(store, OPERATOR, UpstreamConfig(), "nope", OrgChange(name="x"))
    with pytest.raises(InvalidRequest, match="tier: unknown seat tier"):
        await members.put_member(
            store, OPERATOR, TIERS, org, "bob", role=Role.MEMBER, tier="gold", enabled=True
        )


async def test_a_purchase_is_idempotent_by_its_key(store: Store) -> None:
    org = await new_org(store, Plan.TEAM)
    first, replay = await settings.purchase(
        store, OPERATOR, org, amount=25 * 10**9, key="buy-1", ahead=True
    )
    again, replay2 = await settings.purchase(
        store, OPERATOR, org, amount=25 * 10**9, key="buy-1", ahead=True
    )
    assert (first["balance"], replay, again["balance"], replay2) == ("25.00", False, "25.00", True)
    with pytest.raises(Conflict, match="idempotency_key"):
        await settings.purchase(store, OPERATOR, org, amount=5 * 10**9, key="buy-1", ahead=True)
    with pytest.raises(Conflict, match="buy_ahead"):  # extra usage off: said first
        await settings.purchase(store, OPERATOR, org, amount=5 * 10**9, key="buy-2", ahead=False)


async def test_an_approval_that_would_not_let_the_member_spend_changes_nothing(
    store: Store,
) -> None:
    org = await new_org(store, Plan.ENTERPRISE)
    await settings.patch_settings(
        store, OPERATOR, TIERS, org, SettingsChange(enabled=True, sent=("enabled",))
    )
    await settings.put_tier_limit(store, OPERATOR, TIERS, org, "standard", 10 * 10**9)
    await settings.put_member_setting(store, OPERATOR, org, "ann", limit=10 * 10**9)
    ann = member_actor(org, "ann", Role.MEMBER)
    asked, created = await requests.ask(store, ann, amount=20 * 10**9, message="a big job")
    again, created2 = await requests.ask(store, ann, amount=None, message=None)
    assert (created, created2, again["id"]) == (True, False, asked["id"])
    before = await settings.get_settings(store, OPERATOR, TIERS, org)
    with pytest.raises(Conflict, match="seat-tier limit"):
        await requests.decide(store, OPERATOR, org, asked["id"], RequestState.APPROVED, Approval())
    assert await settings.get_settings(store, OPERATOR, TIERS, org) == before
    done = await requests.decide(
        store, OPERATOR, org, asked["id"], RequestState.APPROVED, Approval(raise_tier=True)
    )
    assert (done["state"], done["granted"], done["new_limit"], done["new_tier_limit"]) == (
        RequestState.APPROVED,
        "20.00",
        "30.00",
        "30.00",
    )
    with pytest.raises(Conflict, match="already approved"):
        await requests.decide(store, OPERATOR, org, asked["id"], RequestState.DISMISSED, Approval())


@pytest.mark.parametrize("second", [RequestState.APPROVED, RequestState.DISMISSED])
async def test_of_two_concurrent_decisions_exactly_one_has_effect(
    store: Store, second: str
) -> None:
    """An approval that raises a limit and a second decision of the same request at once,
    twelve times: one answers, the other is refused, and the limits are raised only when the
    approval is the one that took effect (a dismissed request never raised anything)."""
    for _ in range(12):
        org = await new_org(store, Plan.ENTERPRISE)
        await settings.patch_settings(
            store, OPERATOR, TIERS, org, SettingsChange(enabled=True, sent=("enabled",))
        )
        await settings.put_member_setting(store, OPERATOR, org, "ann", limit=10 * 10**9)
        ann = member_actor(org, "ann", Role.MEMBER)
        asked, _ = await requests.ask(store, ann, amount=5 * 10**9, message=None)
        outcomes = await asyncio.gather(
            requests.decide(store, OPERATOR, org, asked["id"], RequestState.APPROVED, Approval()),
            requests.decide(store, OPERATOR, org, asked["id"], second, Approval(amount=7 * 10**9)),
            return_exceptions=True,
        )
        won = [o for o in outcomes if isinstance(o, dict)]
        lost = [o for o in outcomes if isinstance(o, Conflict)]
        assert len(won) + len(lost) == 2 and won, outcomes
        # the one decision that took effect: what the request records now
        (record,) = (await requests.list_requests(store, OPERATOR, org, None))["requests"]
        # the other was refused, or (the same decision) answered as a replay of it
        assert all(o == record for o in won), (won, record)
        limit = int((await store.member_fields(org, "ann", ("limit",)))["limit"])
        if record["state"] == RequestState.DISMISSED:
            assert limit == 10 * 10**9  # nothing raised
        else:  # raised once, by what the winner granted
            assert limit == 10 * 10**9 + int(record["granted"].replace(".", "")) * 10**7
