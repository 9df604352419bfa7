"""The only module that talks to PostgreSQL: the durable ledger, statements, usage history.

Rows are keyed by (org, operation id), so writing an entry twice is a no-op: a sink that
crashed between its commit and its XACK, or a redelivered entry, never duplicates a charge.
An entry that arrives for a month whose statement is already frozen is billed on the month
it arrives in (``statement_period``), so a closed statement never changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import asyncpg
import orjson

from proxy.core.errors import StoreUnavailable
from proxy.core.vocabulary import Mode

INSERT = """
INSERT INTO ledger_entries (org_id, op_id, stream_id, kind, ts, period, statement_period,
    member_id, tier, mode, model, cost_nano, balance_delta_nano, input_tokens, output_tokens,
    cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, web_search_requests, source,
    estimated)
SELECT $1, $2, $3, $4, $5, $6,
    CASE WHEN EXISTS (SELECT 1 FROM statements s WHERE s.org_id = $1 AND s.period = $6)
         THEN $20 ELSE $6 END,
    $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $21
ON CONFLICT (org_id, op_id) DO NOTHING
"""

log = logging.getLogger(__name__)
ESTIMATED = "estimated"  # spend_by_member: the part of a member's cost that is estimated


def period_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def _row(org: str, e: Mapping[str, str], now_period: str) -> tuple[Any, ...]:
    usage = orjson.loads(e.get("usage") or "{}")

    def tok(name: str) -> int:
        return int(usage.get(name, 0))

    return (
        org,
        e["op"],
        e["id"],
        e["kind"],
        datetime.fromtimestamp(int(e["ts"]), UTC),
        e["period"],
        e.get("member") or None,
        e.get("tier") or None,
        e.get("mode") or None,
        e.get("model") or None,
        int(e["cost"]),
        int(e["balance_delta"]),
        tok("input_tokens"),
        tok("output_tokens"),
        tok("cache_write_5m_tokens"),
        tok("cache_write_1h_tokens"),
        tok("cache_read_input_tokens"),
        tok("web_search_requests"),
        e.get("source") or None,
        now_period,
        e.get("estimated") == "1",
    )


class EntryRefused(Exception):
    """A ledger entry the database cannot take, however often it is sent."""


class LedgerUnavailable(StoreUnavailable):
    """The ledger database (PostgreSQL) cannot be reached just now."""


class LedgerDB:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, url: str, *, max_size: int = 5) -> LedgerDB:
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("ledger database unavailable", extra={"fields": {"error": repr(exc)}})
            raise StoreUnavailable("the billing history is unavailable; try again shortly") from exc
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, each in its own transaction."""
        applied: list[str] = []
        files = sorted(
            (f for f in resources.files("proxy.migrations").iterdir() if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        async with self.pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version text PRIMARY KEY, applied_at timestamptz NOT NULL "
                "DEFAULT now())"
            )
            # one migrator at a time
            await conn.execute("SELECT pg_advisory_lock(738201)")
            try:
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for f in files:
                    version = f.name.removesuffix(".sql")
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(f.read_text("utf-8"))
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version
                        )
                    applied.append(version)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(738201)")
        return applied

    async def insert(self, org: str, entries: Sequence[Mapping[str, str]], *, now: float) -> None:
        """Write stream entries durably, in one transaction; rows already there are kept.
        Raises ``EntryRefused`` when an entry cannot be stored (a value the database or the
        row refuses: sent again it would be refused again), ``LedgerUnavailable`` when the
        database cannot be reached (sent again later, it goes in)."""
        try:
            rows = [_row(org, e, period_of(now)) for e in entries]
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise EntryRefused(f"{type(exc).__name__}: {exc}") from exc
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(INSERT, rows)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise EntryRefused(f"{type(exc).__name__}: {exc}") from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerUnavailable(
                f"the ledger database is unavailable ({type(exc).__name__})"
            ) from exc

    async def lines(self, org: str, period: str) -> list[dict[str, Any]]:
        """Usage on a statement: per member, model and mode, with tokens and cost."""
        rows = await self.pool.fetch(
            """
            SELECT member_id, tier, model, mode, count(*) AS requests,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
                   sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
                   sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
                   sum(cache_read_tokens) AS cache_read_tokens,
                   sum(web_search_requests) AS web_search_requests, sum(cost_nano) AS cost_nano,
                   count(*) FILTER (WHERE estimated) AS estimated_requests,
                   coalesce(sum(cost_nano) FILTER (WHERE estimated), 0) AS estimated_nano
            FROM ledger_entries WHERE org_id = $1 AND statement_period = $2 AND kind = 'usage'
            GROUP BY member_id, tier, model, mode ORDER BY member_id, model, mode""",
            org,
            period,
        )
        return [dict(r) for r in rows]

    async def credits(self, org: str, period: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """
            SELECT kind, op_id, ts, balance_delta_nano FROM ledger_entries
            WHERE org_id = $1 AND statement_period = $2 AND kind IN ('purchase', 'reload')
            ORDER BY ts, op_id""",
            org,
            period,
        )
        return [dict(r) for r in rows]

    async def credit_history(
        self, org: str, count: int, before: tuple[datetime, str] | None = None
    ) -> list[dict[str, Any]]:
        """Purchases and reloads of all time, newest first: ``count`` of them, older than
        ``before`` (the (ts, op_id) of the last one of the page before) when given."""
        # no cursor: from after any time a ledger can hold
        after = before or (datetime.max.replace(tzinfo=UTC), "")
        rows = await self.pool.fetch(
            """
            SELECT kind, op_id, ts, balance_delta_nano, source FROM ledger_entries
            WHERE org_id = $1 AND kind IN ('purchase', 'reload')
              AND (ts, op_id) < ($2, $3)
            ORDER BY ts DESC, op_id DESC LIMIT $4""",
            org,
            after[0],
            after[1],
            count,
        )
        return [dict(r) for r in rows]

    async def balance_before(self, org: str, period: str) -> int:
        value = await self.pool.fetchval(
            "SELECT coalesce(sum(balance_delta_nano), 0) FROM ledger_entries "
            "WHERE org_id = $1 AND statement_period < $2",
            org,
            period,
        )
        return int(value)

    async def frozen(self, org: str, period: str) -> dict[str, Any] | None:
        raw = await self.pool.fetchval(
            "SELECT document FROM statements WHERE org_id = $1 AND period = $2", org, period
        )
        return None if raw is None else dict(orjson.loads(raw))

    async def freeze(self, org: str, period: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Store a closed month's statement once; a concurrent freeze keeps the first."""
        await self.pool.execute(
            "INSERT INTO statements (org_id, period, document) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            org,
            period,
            orjson.dumps(document).decode(),
        )
        stored = await self.frozen(org, period)
        assert stored is not None
        return stored

    async def totals(self, org: str, period: str) -> dict[str, int]:
        """Ledger sums that Redis counters derive from (see reconcile)."""
        out: dict[str, int] = {}
        for r in await self.pool.fetch(
            """
                SELECT member_id, tier, mode, sum(cost_nano) AS cost FROM ledger_entries
                WHERE org_id = $1 AND period = $2 AND kind = 'usage'
                GROUP BY member_id, tier, mode""",
            org,
            period,
        ):
            cost = int(r["cost"])
            if r["mode"] == Mode.EXTRA_USAGE:
                out[f"member:{r['member_id']}:spend"] = (
                    out.get(f"member:{r['member_id']}:spend", 0) + cost
                )
                out[f"tier:{r['tier']}:spend"] = out.get(f"tier:{r['tier']}:spend", 0) + cost
                out["org:spend"] = out.get("org:spend", 0) + cost
            else:
                out[f"member:{r['member_id']}:included"] = (
                    out.get(f"member:{r['member_id']}:included", 0) + cost
                )
        out["org:balance"] = int(
            await self.pool.fetchval(
                "SELECT coalesce(sum(balance_delta_nano), 0) FROM ledger_entries WHERE org_id = $1",
                org,
            )
        )
        return out

    async def has_op(self, org: str, op_id: str) -> bool:
        """Whether the ledger holds an entry of operation ``op_id``."""
        return bool(
            await self.pool.fetchval(
                "SELECT 1 FROM ledger_entries WHERE org_id = $1 AND op_id = $2", org, op_id
            )
        )

    async def op_ids(self, org: str) -> set[str]:
        rows = await self.pool.fetch("SELECT op_id FROM ledger_entries WHERE org_id = $1", org)
        return {r["op_id"] for r in rows}

    async def daily_extra_usage(self, org: str, period: str) -> list[dict[str, Any]]:
        """The month's extra usage by UTC day, member and model (nano-USD)."""
        rows = await self.pool.fetch(
            """
                SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, member_id, model,
                       sum(cost_nano) AS cost
                FROM ledger_entries
                WHERE org_id = $1 AND period = $2 AND kind = 'usage' AND mode = 'extra_usage'
                GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
            org,
            period,
        )
        return [
            {"day": r["day"], "member": r["member_id"], "model": r["model"], "cost": int(r["cost"])}
            for r in rows
        ]

    async def spend_by_member(self, org: str, period: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in await self.pool.fetch(
            """
                SELECT member_id, mode, sum(cost_nano) AS cost,
                       coalesce(sum(cost_nano) FILTER (WHERE estimated), 0) AS estimated
                FROM ledger_entries
                WHERE org_id = $1 AND period = $2 AND kind = 'usage' GROUP BY member_id, mode""",
            org,
            period,
        ):
            spend = out.setdefault(r["member_id"], {})
            spend[r["mode"]] = int(r["cost"])
            spend[ESTIMATED] = spend.get(ESTIMATED, 0) + int(r["estimated"])
        return out


class LazyLedger:
    """The proxy's handle on the ledger database, opened on first use: the proxy itself
    serves without PostgreSQL; only statements and usage history need it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: LedgerDB | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> LedgerDB:
        async with self._lock:
            if self._db is None:
                self._db = await LedgerDB.connect(self.url)
            return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
