"""``extra-usage-proxy reconcile ORG``: Redis counters against the durable ledger.

The ledger is PostgreSQL plus what the sink has not moved yet (still in the org's stream);
Redis counters are derived from it. Reports each difference; ``--repair`` rewrites the
derived counters of the current month (and the balance) from the ledger, as one audited
write. Seat windows (rolling 5 h / 7 d) are not rebuilt: they are not a function of the
calendar month.
"""

from __future__ import annotations

from typing import Any

from proxy.core.statements import differences, fold, merge
from proxy.ledger.db import LedgerDB
from proxy.storage.store import Store


async def redis_counters(store: Store, org: str, period: str) -> dict[str, int]:
    s = await store.org_settings(org)
    out: dict[str, int] = {}
    if s.get("plan") == "team" or s.get("balance"):
        out["org:balance"] = int(s.get("balance") or 0)
    else:
        out["org:balance"] = 0
    if s.get("spend_p") == period:
        out["org:spend"] = int(s.get("spend") or 0)
    for f, v in s.items():
        if f.startswith("tspend:") and s.get(f"tspend_p:{f[7:]}") == period:
            out[f"tier:{f[7:]}:spend"] = int(v)
    raw = await store.client.hgetall(store.keys(org).members)
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    for f, v in fields.items():
        member, _, name = f.rpartition("|")
        if not member:
            continue
        if name == "spend" and fields.get(f"{member}|spend_p") == period:
            out[f"member:{member}:spend"] = int(v)
        if name == "inc" and fields.get(f"{member}|inc_p") == period:
            out[f"member:{member}:included"] = int(v)
    return {k: v for k, v in out.items() if v}


async def ledger_totals(store: Store, db: LedgerDB, org: str, period: str) -> dict[str, int]:
    durable = await db.totals(org, period)
    sunk = await db.op_ids(org)
    pending = [e for e in await store.ledger(org) if e["op"] not in sunk]
    return {k: v for k, v in merge(durable, fold(pending, period)).items() if v}


async def reconcile(store: Store, db: LedgerDB, org: str, period: str) -> list[dict[str, Any]]:
    return differences(
        await redis_counters(store, org, period), await ledger_totals(store, db, org, period)
    )


async def repair(store: Store, db: LedgerDB, org: str, period: str) -> list[dict[str, Any]]:
    """Rewrite the derived counters of ``period`` from the ledger; returns what changed."""
    diffs = await reconcile(store, db, org, period)
    org_fields: dict[str, str] = {}
    member_fields: dict[str, str] = {}
    for d in diffs:
        kind, _, rest = d["counter"].partition(":")
        value = str(d["ledger"])
        if d["counter"] == "org:balance":
            org_fields["balance"] = value
        elif d["counter"] == "org:spend":
            org_fields.update({"spend_p": period, "spend": value})
        elif kind == "tier":
            tier = rest.rsplit(":", 1)[0]
            org_fields.update({f"tspend_p:{tier}": period, f"tspend:{tier}": value})
        elif kind == "member":
            member, _, name = rest.rpartition(":")
            pfield = "spend_p" if name == "spend" else "inc_p"
            vfield = "spend" if name == "spend" else "inc"
            member_fields.update({f"{member}|{pfield}": period, f"{member}|{vfield}": value})
    if org_fields:
        await store.update(
            org, "org", actor="reconcile", action="reconcile.repair", fields=org_fields
        )
    if member_fields:
        await store.update(
            org, "members", actor="reconcile", action="reconcile.repair", fields=member_fields
        )
    return diffs
