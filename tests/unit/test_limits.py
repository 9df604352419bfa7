"""What binds, as the admin views show it (proxy.core.limits), on the cases owners met."""

from __future__ import annotations

from proxy.core.limits import (
    BALANCE,
    MEMBER_LIMIT,
    MEMBER_OFF,
    ORG_LIMIT,
    ORG_OFF,
    TIER_LIMIT,
    UNLIMITED,
    MemberState,
    OrgState,
    member_binding,
    org_binding,
    plan_grant,
)

USD = 10**9


def org(plan: str = "enterprise", **kw: object) -> OrgState:
    base: dict[str, object] = {
        "plan": plan,
        "enabled": True,
        "spend": 0,
        "reserved": 0,
        "limit": None,
        "balance": 500 * USD if plan == "team" else None,
    }
    return OrgState(**{**base, **kw})  # type: ignore[arg-type]


def member(**kw: object) -> MemberState:
    base: dict[str, object] = {
        "enabled": True,
        "spend": 0,
        "reserved": 0,
        "limit": None,
        "tier_limit": None,
    }
    return MemberState(**{**base, **kw})  # type: ignore[arg-type]


def test_a_lower_tier_limit_binds_over_the_members_own() -> None:
    # her own $400, the Premium tier's $200, spent $201.60: the tier stopped her
    b = member_binding(org(), member(spend=201_600_000_000, limit=400 * USD, tier_limit=200 * USD))
    assert (b.rule, b.effective_limit, b.reached) == (TIER_LIMIT, 200 * USD, True)
    assert b.remaining == -1_600_000_000


def test_the_members_own_limit_binds_when_it_is_the_lowest() -> None:
    b = member_binding(
        org(), member(spend=10 * USD, reserved=USD, limit=50 * USD, tier_limit=200 * USD)
    )
    assert (b.rule, b.effective_limit, b.remaining, b.reached) == (
        MEMBER_LIMIT,
        49 * USD,
        39 * USD,
        False,
    )


def test_an_org_past_its_limit_binds_everyone_and_shows_reached() -> None:
    o = org(spend=301_680_000_000, limit=300 * USD)
    assert (org_binding(o).rule, org_binding(o).effective_limit) == (ORG_LIMIT, 300 * USD)
    assert org_binding(o).reached
    b = member_binding(o, member(spend=20 * USD, tier_limit=200 * USD))
    assert (b.rule, b.effective_limit, b.reached) == (ORG_LIMIT, 20 * USD, True)


def test_team_balance_binds_below_the_org_limit() -> None:
    o = org("team", balance=30 * USD, reserved=5 * USD, spend=100 * USD, limit=1000 * USD)
    assert (org_binding(o).rule, org_binding(o).effective_limit) == (BALANCE, 125 * USD)
    b = member_binding(o, member(spend=7 * USD, limit=1 * USD))  # a member limit is Enterprise's
    assert (b.rule, b.effective_limit) == (BALANCE, 32 * USD)


def test_off_is_said_not_shown_as_zero_dollars() -> None:
    assert member_binding(org(enabled=False), member()).rule == ORG_OFF
    assert member_binding(org(), member(limit=0)).rule == MEMBER_OFF
    assert member_binding(org("team"), member(enabled=False)).rule == MEMBER_OFF
    assert org_binding(org(enabled=False)).reached


def test_nothing_set_is_unlimited() -> None:
    b = member_binding(org(), member(spend=5 * USD))
    assert (b.rule, b.effective_limit, b.remaining, b.reached) == (UNLIMITED, None, None, False)


def test_approving_raises_the_own_limit_by_what_it_takes() -> None:
    g = plan_grant(
        org(), member(spend=40 * USD, limit=50 * USD), 100 * USD, raise_tier=False, raise_org=False
    )
    assert (g.blocked, g.member_limit, g.tier_limit) == ("", 150 * USD, None)


def test_a_tier_limit_that_would_still_block_refuses_unless_raised_too() -> None:
    # Kim asked $100; the $50 Standard tier limit kept refusing her
    kim = member(spend=50 * USD, tier_limit=50 * USD)
    assert plan_grant(org(), kim, 100 * USD, raise_tier=False, raise_org=False).blocked == (
        TIER_LIMIT
    )
    g = plan_grant(org(), kim, 100 * USD, raise_tier=True, raise_org=False)
    assert (g.blocked, g.tier_limit, g.member_limit) == ("", 150 * USD, None)
    o = org(limit=120 * USD, spend=100 * USD)
    assert plan_grant(o, kim, 100 * USD, raise_tier=True, raise_org=False).blocked == ORG_LIMIT
    g = plan_grant(o, kim, 100 * USD, raise_tier=True, raise_org=True)
    assert (g.tier_limit, g.org_limit) == (150 * USD, 200 * USD)


def test_approving_a_member_who_was_off_turns_them_on_and_off_orgs_cannot() -> None:
    g = plan_grant(org(), member(limit=0), 25 * USD, raise_tier=False, raise_org=False)
    assert g.member_limit == 25 * USD
    assert plan_grant(org(enabled=False), member(), USD, raise_tier=True, raise_org=True).blocked
    assert plan_grant(org(), member(), USD, raise_tier=False, raise_org=False).unlimited
