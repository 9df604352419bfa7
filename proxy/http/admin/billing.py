"""Admin API, billing records: statements (JSON and CSV) and usage by member for a period.

The month to date comes from Redis (the counters admission reads); history and statements
come from the durable ledger in PostgreSQL. A closed month's statement is frozen the first
time it is read, and never changes after.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from proxy.config import TierConfig
from proxy.core.errors import InvalidRequest
from proxy.core.limits import Binding, MemberState, OrgState, member_binding, org_binding
from proxy.core.money import format_usd, stored_usd
from proxy.core.statements import (
    PERIOD,
    current_period,
    is_closed,
    statement_csv,
    statement_document,
)
from proxy.http.admin.orgs import actor_for, org_id, org_or_404
from proxy.http.appkeys import CONFIG, LEDGER, STORE
from proxy.ledger.db import ESTIMATED
from proxy.storage.model import (
    DEFAULT_ENABLED,
    DEFAULT_ROLE,
    DEFAULT_SCOPE,
    EXTRA_USAGE,
    INCLUDED,
    OFF,
    ON,
    SCOPE_SELECTED,
    TEAM,
    Member,
    Org,
    in_period,
)

routes = web.RouteTableDef()


def _period(value: str) -> str:
    if not PERIOD.match(value):
        raise InvalidRequest(f"period: must be YYYY-MM, from 2000-01 (got {value!r})")
    return value


async def statement(request: web.Request, org: str, period: str) -> dict[str, Any]:
    store = request.app[STORE]
    settings = await org_or_404(store, org)
    db = await request.app[LEDGER].get()
    closed = is_closed(period, time.time(), request.app[CONFIG].ledger.close_after_s)
    if closed:
        frozen = await db.frozen(org, period)
        if frozen is not None:
            return frozen
    doc = statement_document(
        org,
        settings["plan"],
        period,
        await db.lines(org, period),
        await db.credits(org, period),
        await db.balance_before(org, period),
        closed=closed,
    )
    return await db.freeze(org, period, doc) if closed else doc


@routes.get(r"/admin/v1/orgs/{org}/statements/{period:\d{4}-\d{2}}")
async def get_statement(request: web.Request) -> web.Response:
    org = org_id(request)
    await actor_for(request, org)
    return web.json_response(await statement(request, org, _period(request.match_info["period"])))


@routes.get(r"/admin/v1/orgs/{org}/statements/{period:\d{4}-\d{2}}.csv")
async def get_statement_csv(request: web.Request) -> web.Response:
    org = org_id(request)
    await actor_for(request, org)
    period = _period(request.match_info["period"])
    doc = await statement(request, org, period)
    return web.Response(
        text=statement_csv(doc),
        content_type="text/csv",
        headers={"content-disposition": f'attachment; filename="statement-{org}-{period}.csv"'},
    )


@routes.get("/admin/v1/orgs/{org}/usage")
async def usage(request: web.Request) -> web.Response:
    """Spend by member for a period: month to date from Redis, earlier months from the ledger."""
    org = org_id(request)
    await actor_for(request, org)
    store = request.app[STORE]
    settings = await org_or_404(store, org)
    now_period = current_period(time.time())
    period = _period(request.query.get("period", now_period))
    members = await store.members(org)
    tiers = request.app[CONFIG].tiers
    history: dict[str, dict[str, int]] = {}
    if period != now_period:
        history = await (await request.app[LEDGER].get()).spend_by_member(org, period)
    rows = []
    total_extra = total_included = total_estimated = 0
    the_org = org_state(settings, period) if period == now_period else None
    for m in sorted(m for m, f in members.items() if Member.TIER in f):
        fields = members[m]
        if period == now_period:
            extra = in_period(fields, Member.SPEND_PERIOD, Member.SPEND, period)
            inc = in_period(fields, Member.INCLUDED_PERIOD, Member.INCLUDED, period)
            est = in_period(fields, Member.ESTIMATED_PERIOD, Member.ESTIMATED, period)
        else:
            extra = history.get(m, {}).get(EXTRA_USAGE, 0)
            inc = history.get(m, {}).get(INCLUDED, 0)
            est = history.get(m, {}).get(ESTIMATED, 0)
        total_extra += extra
        total_included += inc
        total_estimated += est
        tier = fields[Member.TIER]
        rows.append(
            {
                "member_id": m,
                "tier": tier,
                "role": fields.get(Member.ROLE, DEFAULT_ROLE),
                "enabled": fields.get(Member.ENABLED, DEFAULT_ENABLED) != OFF,
                "extra_usage": format_usd(extra),
                "included_usage": format_usd(inc),
                # of both: charged on the estimate rule (answers cut before their usage came)
                "estimated_usage": format_usd(est),
                "monthly_limit": stored_usd(fields.get(Member.LIMIT)),
                "tier_limit": stored_usd(settings.get(Org.tier_limit(tier))),
                "extra_usage_enabled": fields.get(Member.EU) == ON,
                # the seat allowance's two windows now (the month to date only)
                "windows": None
                if the_org is None
                else _windows(fields, tiers.get(tier), int(time.time())),
                # what limits their extra usage now (the month to date only)
                "binding": None
                if the_org is None
                else _binding_view(
                    member_binding(the_org, member_state(settings, fields, tier, period))
                ),
            }
        )
    return web.json_response(
        {
            "org_id": org,
            "period": period,
            "source": "redis" if period == now_period else "ledger",
            "members": rows,
            "totals": {
                "extra_usage": format_usd(total_extra),
                "included_usage": format_usd(total_included),
                "estimated_usage": format_usd(total_estimated),
                "monthly_limit": stored_usd(settings.get(Org.LIMIT)),
                "binding": None if the_org is None else _binding_view(org_binding(the_org)),
            },
        }
    )


@routes.get("/admin/v1/orgs/{org}/usage/daily")
async def daily(request: web.Request) -> web.Response:
    """A month's extra usage by day, with each day's split by member and by model, from the
    durable ledger (what the sink has moved: seconds behind Redis)."""
    org = org_id(request)
    await actor_for(request, org)
    await org_or_404(request.app[STORE], org)
    period = _period(request.query.get("period", current_period(time.time())))
    rows = await (await request.app[LEDGER].get()).daily_extra_usage(org, period)
    days: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = days.setdefault(r["day"], {"total": 0, "by_member": {}, "by_model": {}})
        d["total"] += r["cost"]
        for key, name in (("by_member", r["member"]), ("by_model", r["model"])):
            d[key][name] = d[key].get(name, 0) + r["cost"]
    return web.json_response(
        {
            "org_id": org,
            "period": period,
            "days": [
                {
                    "day": day,
                    "extra_usage": format_usd(d["total"]),
                    "by_member": {k: format_usd(v) for k, v in sorted(d["by_member"].items())},
                    "by_model": {k: format_usd(v) for k, v in sorted(d["by_model"].items())},
                }
                for day, d in sorted(days.items())
            ],
        }
    )


def _windows(fields: dict[str, str], tier: TierConfig | None, now: int) -> dict[str, Any] | None:
    """A member's seat windows now: used against the allowance, and when each resets (None:
    no window open — the next request opens one)."""
    if tier is None:
        return None
    out: dict[str, Any] = {}
    for name, end_f, used_f, allowance in (
        ("five_hour", Member.SESSION_END, Member.SESSION_USED, tier.session_allowance),
        ("seven_day", Member.WEEK_END, Member.WEEK_USED, tier.weekly_allowance),
    ):
        end = int(fields.get(end_f) or 0)
        open_ = now < end
        out[name] = {
            "used": format_usd(int(fields.get(used_f) or 0) if open_ else 0),
            "allowance": format_usd(allowance),
            "resets_at": end if open_ else None,
        }
    return out


def _opt(v: str | None) -> int | None:
    return None if v in (None, "") else int(v)


def org_state(s: dict[str, str], period: str) -> OrgState:
    return OrgState(
        plan=s.get(Org.PLAN, ""),
        enabled=s.get(Org.EU_ON) == ON,
        spend=in_period(s, Org.SPEND_PERIOD, Org.SPEND, period),
        reserved=int(s.get(Org.EU_RESERVED) or 0),
        limit=_opt(s.get(Org.LIMIT)),
        balance=int(s.get(Org.BALANCE) or 0) if s.get(Org.PLAN) == TEAM else None,
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
    selected = s.get(Org.SCOPE, DEFAULT_SCOPE) == SCOPE_SELECTED and s.get(Org.PLAN) == TEAM
    return MemberState(
        enabled=not selected or f.get(Member.EU) == ON,
        spend=in_period(f, Member.SPEND_PERIOD, Member.SPEND, period),
        reserved=int(f.get(Member.EU_RESERVED) or 0),
        limit=_opt(f.get(Member.LIMIT)),
        tier_limit=_opt(s.get(Org.tier_limit(tier))),
    )


def _binding_view(b: Binding) -> dict[str, Any]:
    """A binding in the API's words: amounts in USD ("Unlimited" is null)."""
    return {
        "rule": b.rule,
        "effective_limit": None if b.effective_limit is None else format_usd(b.effective_limit),
        "remaining": None if b.remaining is None else format_usd(max(b.remaining, 0)),
        "reached": b.reached,
    }
