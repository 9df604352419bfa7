"""Billing records: statements (JSON and CSV) and usage by member for a period.

The month to date comes from Redis (the counters admission reads); history and statements
come from the durable ledger in PostgreSQL. A closed month's statement is frozen the first
time it is read, and never changes after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from proxy.admin.actors import Actor, require
from proxy.admin.states import binding_view, member_state, org_state, windows
from proxy.admin.writes import org_settings
from proxy.config import TierConfig
from proxy.core.errors import InvalidRequest
from proxy.core.limits import member_binding, org_binding
from proxy.core.money import format_usd, stored_usd
from proxy.core.statements import (
    PERIOD,
    current_period,
    is_closed,
    statement_document,
)
from proxy.core.vocabulary import Mode
from proxy.ledger.db import ESTIMATED, LazyLedger
from proxy.storage.model import DEFAULT_ENABLED, DEFAULT_ROLE, OFF, ON, Member, Org, in_period
from proxy.storage.store import Store


def period_of(value: str | None) -> str:
    """A period a caller named (``YYYY-MM``), or this month when none."""
    if value is None:
        return current_period(time.time())
    if not PERIOD.match(value):
        raise InvalidRequest(f"period: must be YYYY-MM, from 2000-01 (got {value!r})")
    return value


async def statement(
    store: Store, ledger: LazyLedger, actor: Actor, close_after_s: int, org: str, period: str
) -> dict[str, Any]:
    """The month's statement: lines per member and model, credits, totals."""
    require(actor, org)
    period = period_of(period)
    settings = await org_settings(store, org)
    db = await ledger.get()
    closed = is_closed(period, time.time(), close_after_s)
    if closed:
        frozen = await db.frozen(org, period)
        if frozen is not None:
            return frozen
    doc = statement_document(
        org,
        settings[Org.PLAN],
        period,
        await db.lines(org, period),
        await db.credits(org, period),
        await db.balance_before(org, period),
        closed=closed,
    )
    return await db.freeze(org, period, doc) if closed else doc


# a page of the credit history: at most this many purchases and reloads
MAX_CREDITS = 200


# a page's position in the credit history: the epoch second and the hex of the op id of the
# last credit of the page before (every value of this form is a position)
CREDIT_CURSOR = re.compile(r"([0-9]{1,12})-((?:[0-9a-f]{2}){0,600})")
_LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last a datetime holds


def _credit_cursor(ts: datetime, op_id: str) -> str:
    return f"{int(ts.timestamp())}-{op_id.encode().hex()}"


def _credit_position(cursor: str) -> tuple[datetime, str]:
    """Where a page of the credit history starts: a cursor this API gave, or a 400."""
    m = CREDIT_CURSOR.fullmatch(cursor)
    if m is None:
        raise InvalidRequest("cursor: not a cursor this API gave (use next_cursor as it came)")
    epoch = min(int(m[1]), _LAST_SECOND)
    op_id = bytes.fromhex(m[2]).decode("utf-8", "replace").replace("\x00", "")
    return datetime.fromtimestamp(epoch, UTC), op_id


async def credit_history(
    ledger: LazyLedger, actor: Actor, org: str, count: int, cursor: str | None = None
) -> dict[str, Any]:
    """Team's purchases and reloads of all time, newest first, from the durable ledger: a
    page of ``count`` (1 to ``MAX_CREDITS``) from ``cursor`` (the ``next_cursor`` of the page
    before), with ``next_cursor`` None on the last page. However long the audit log grows,
    no credit falls out of it."""
    require(actor, org)
    before = None if cursor is None else _credit_position(cursor)
    count = min(max(count, 1), MAX_CREDITS)
    db = await ledger.get()
    rows = await db.credit_history(org, count, before)
    credits = [
        {
            "kind": r["kind"],
            "at": int(r["ts"].timestamp()),
            "amount": format_usd(int(r["balance_delta_nano"])),
            # the purchase's idempotency key, or the reload's id
            "reference": r["op_id"].split(":", 1)[-1],
            "by": r["source"],
        }
        for r in rows
    ]
    last = rows[-1] if len(rows) == count else None
    return {
        "org_id": org,
        "credits": credits,
        "next_cursor": None if last is None else _credit_cursor(last["ts"], last["op_id"]),
    }


async def usage(
    store: Store,
    ledger: LazyLedger,
    actor: Actor,
    tiers: Mapping[str, TierConfig],
    org: str,
    period: str | None,
) -> dict[str, Any]:
    """Spend by member for a period: month to date from Redis (with each member's windows and
    what binds them now), earlier months from the ledger."""
    require(actor, org)
    settings = await org_settings(store, org)
    now_period = current_period(time.time())
    period = period_of(period or now_period)
    members = await store.members(org)
    history: dict[str, dict[str, int]] = {}
    if period != now_period:
        history = await (await ledger.get()).spend_by_member(org, period)
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
            extra = history.get(m, {}).get(Mode.EXTRA_USAGE, 0)
            inc = history.get(m, {}).get(Mode.INCLUDED, 0)
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
                else windows(fields, tiers.get(tier), int(time.time())),
                # what limits their extra usage now (the month to date only)
                "binding": None
                if the_org is None
                else binding_view(
                    member_binding(the_org, member_state(settings, fields, tier, period))
                ),
            }
        )
    return {
        "org_id": org,
        "period": period,
        "source": "redis" if period == now_period else "ledger",
        "members": rows,
        "totals": {
            "extra_usage": format_usd(total_extra),
            "included_usage": format_usd(total_included),
            "estimated_usage": format_usd(total_estimated),
            "monthly_limit": stored_usd(settings.get(Org.LIMIT)),
            "binding": None if the_org is None else binding_view(org_binding(the_org)),
        },
    }


async def daily(
    store: Store, ledger: LazyLedger, actor: Actor, org: str, period: str | None
) -> dict[str, Any]:
    """A month's extra usage by day, with each day's split by member and by model, from the
    durable ledger (what the sink has moved: seconds behind Redis)."""
    require(actor, org)
    await org_settings(store, org)
    period = period_of(period)
    rows = await (await ledger.get()).daily_extra_usage(org, period)
    days: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = days.setdefault(r["day"], {"total": 0, "by_member": {}, "by_model": {}})
        d["total"] += r["cost"]
        for key, name in (("by_member", r["member"]), ("by_model", r["model"])):
            d[key][name] = d[key].get(name, 0) + r["cost"]
    return {
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
