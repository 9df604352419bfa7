"""``extra-usage-proxy reconcile ORG``: Redis counters against the durable ledger.

The ledger is PostgreSQL plus what the sink has not moved yet (still in the org's stream);
Redis counters are derived from it. Reports each difference; ``--repair`` rewrites the
derived counters of the current month (and the balance) from the ledger, as one audited
write. Seat windows (rolling 5 h / 7 d) are not rebuilt: they are not a function of the
calendar month.

``--repair`` acts only on a complete view: every entry of the stream read (paged to its
end), none added while the counters were read (a settlement then would show as a false
difference), and none trimmed from the stream before the sink had moved it (the stream's
``entries-added`` is at most what it holds plus what PostgreSQL has). Otherwise it refuses,
writes nothing, and says why (``Incomplete``).
"""

from __future__ import annotations

from typing import Any

from proxy.core.statements import differences, fold, merge
from proxy.ledger.db import LedgerDB
from proxy.storage.model import Member, Org, in_period
from proxy.storage.store import Store


class Incomplete(Exception):
    """The view of the ledger is not complete enough to repair counters from."""


async def redis_counters(store: Store, org: str, period: str) -> dict[str, int]:
    s = await store.org_settings(org)
    out: dict[str, int] = {"org:balance": int(s.get(Org.BALANCE) or 0)}
    out["org:spend"] = in_period(s, Org.SPEND_PERIOD, Org.SPEND, period)
    for f in s:
        if f.startswith(Org.TIER_SPEND):
            tier = f[len(Org.TIER_SPEND) :]
            out[f"tier:{tier}:spend"] = in_period(s, *Org.tier_spend(tier), period)
    for member, fields in (await store.members(org)).items():
        out[f"member:{member}:spend"] = in_period(fields, Member.SPEND_PERIOD, Member.SPEND, period)
        out[f"member:{member}:included"] = in_period(
            fields, Member.INCLUDED_PERIOD, Member.INCLUDED, period
        )
    return {k: v for k, v in out.items() if v}


async def ledger_totals(
    store: Store, db: LedgerDB, org: str, period: str, *, added: int | None = None
) -> dict[str, int]:
    """The ledger's totals; ``added`` (the stream's entries ever added, when checking the
    view): raise ``Incomplete`` if some left the stream without reaching PostgreSQL."""
    durable = await db.totals(org, period)
    sunk = await db.op_ids(org)
    stream = await store.ledger(org, count=None)
    if added is not None and added > len(stream) + len(sunk):
        raise Incomplete(
            f"{added - len(stream) - len(sunk)} ledger entries left the stream without "
            "reaching PostgreSQL: the counters cannot be rebuilt from what remains"
        )
    pending = [e for e in stream if e["op"] not in sunk]
    return {k: v for k, v in merge(durable, fold(pending, period)).items() if v}


async def reconcile(
    store: Store, db: LedgerDB, org: str, period: str, *, check: bool = False
) -> list[dict[str, Any]]:
    """Every counter where Redis and the ledger disagree. ``check``: raise ``Incomplete``
    unless the view is complete (see the module's docstring)."""
    before = await store.ledger_position(org) if check else None
    counters = await redis_counters(store, org, period)
    totals = await ledger_totals(store, db, org, period, added=before and before[1])
    if before is not None and (await store.ledger_position(org))[0] != before[0]:
        raise Incomplete(
            "charges were written while the counters were read (requests in flight): "
            "run it again when the org is quiet"
        )
    return differences(counters, totals)


async def repair(store: Store, db: LedgerDB, org: str, period: str) -> list[dict[str, Any]]:
    """Rewrite the derived counters of ``period`` from the ledger; returns what changed.
    Raises ``Incomplete`` (and writes nothing) on an incomplete view."""
    diffs = await reconcile(store, db, org, period, check=True)
    org_fields: dict[str, str] = {}
    member_fields: dict[str, str] = {}
    for d in diffs:
        kind, _, rest = d["counter"].partition(":")
        value = str(d["ledger"])
        if d["counter"] == "org:balance":
            org_fields[Org.BALANCE] = value
        elif d["counter"] == "org:spend":
            org_fields.update({Org.SPEND_PERIOD: period, Org.SPEND: value})
        elif kind == "tier":
            pfield, vfield = Org.tier_spend(rest.rsplit(":", 1)[0])
            org_fields.update({pfield: period, vfield: value})
        elif kind == "member":
            member, _, name = rest.rpartition(":")
            pfield, vfield = (
                (Member.SPEND_PERIOD, Member.SPEND)
                if name == "spend"
                else (Member.INCLUDED_PERIOD, Member.INCLUDED)
            )
            member_fields.update(
                {Member.field(member, pfield): period, Member.field(member, vfield): value}
            )
    if org_fields:
        await store.update(
            org, "org", actor="reconcile", action="reconcile.repair", fields=org_fields
        )
    if member_fields:
        await store.update(
            org, "members", actor="reconcile", action="reconcile.repair", fields=member_fields
        )
    return diffs
