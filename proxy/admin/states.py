"""The org's and a member's stored fields as the pure rules read them (``proxy.core.limits``),
and a member's seat windows now."""

from __future__ import annotations

from typing import Any

from proxy.config import TierConfig
from proxy.core.limits import Binding, MemberState, OrgState
from proxy.core.money import format_usd
from proxy.core.vocabulary import Claim, Plan, Scope
from proxy.storage.model import DEFAULT_SCOPE, ON, Member, Org, in_period


def _opt(v: str | None) -> int | None:
    return None if v in (None, "") else int(v)


def org_state(s: dict[str, str], period: str) -> OrgState:
    return OrgState(
        plan=s.get(Org.PLAN, ""),
        enabled=s.get(Org.EU_ON) == ON,
        spend=in_period(s, Org.SPEND_PERIOD, Org.SPEND, period),
        reserved=int(s.get(Org.EU_RESERVED) or 0),
        limit=_opt(s.get(Org.LIMIT)),
        balance=int(s.get(Org.BALANCE) or 0) if s.get(Org.PLAN) == Plan.TEAM else None,
    )


# the member's fields member_state reads (a member's own read, without the whole hash)
MEMBER_STATE_FIELDS = (
    Member.TIER,
    Member.EU,
    Member.SPEND_PERIOD,
    Member.SPEND,
    Member.EU_RESERVED,
    Member.LIMIT,
)


def member_state(s: dict[str, str], f: dict[str, str], tier: str, period: str) -> MemberState:
    selected = s.get(Org.SCOPE, DEFAULT_SCOPE) == Scope.SELECTED and s.get(Org.PLAN) == Plan.TEAM
    return MemberState(
        enabled=not selected or f.get(Member.EU) == ON,
        spend=in_period(f, Member.SPEND_PERIOD, Member.SPEND, period),
        reserved=int(f.get(Member.EU_RESERVED) or 0),
        limit=_opt(f.get(Member.LIMIT)),
        tier_limit=_opt(s.get(Org.tier_limit(tier))),
    )


def windows(fields: dict[str, str], tier: TierConfig | None, now: int) -> dict[str, Any] | None:
    """A member's seat windows now: used against the allowance, and when each resets (None:
    no window open — the next request opens one)."""
    if tier is None:
        return None
    out: dict[str, Any] = {}
    for name, end_f, used_f, allowance in (
        (Claim.FIVE_HOUR, Member.SESSION_END, Member.SESSION_USED, tier.session_allowance),
        (Claim.SEVEN_DAY, Member.WEEK_END, Member.WEEK_USED, tier.weekly_allowance),
    ):
        end = int(fields.get(end_f) or 0)
        open_ = now < end
        out[name] = {
            "used": format_usd(int(fields.get(used_f) or 0) if open_ else 0),
            "allowance": format_usd(allowance),
            "resets_at": end if open_ else None,
        }
    return out


def binding_view(b: Binding) -> dict[str, Any]:
    """A binding in the API's words: amounts in USD ("Unlimited" is null)."""
    return {
        "rule": b.rule,
        "effective_limit": None if b.effective_limit is None else format_usd(b.effective_limit),
        "remaining": None if b.remaining is None else format_usd(max(b.remaining, 0)),
        "reached": b.reached,
    }
