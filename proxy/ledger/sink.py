"""``extra-usage-proxy ledger-sink``: moves every org's ledger stream into PostgreSQL.

One consumer group per stream. For each org the sink takes, in order: entries left pending
by a consumer that died (XAUTOCLAIM, once they are idle long enough), its own pending entries
(a crash of this consumer between the commit and the XACK), then new entries. A batch is
written in one transaction, and only after the commit is it acknowledged and deleted from
the stream — so a crash at any point redelivers, and the (org, op id) key makes a redelivered
entry a no-op. Orgs are found through the orgs index set, never by scanning the keyspace.

Nothing stops it: an entry PostgreSQL refuses (a value it cannot store) is moved to the org's
dead-letter stream, counted, and every other entry goes on; an org whose pass fails does not
stop the others; a pass that finds Redis or PostgreSQL unavailable is counted and tried
again, with backoff, until they are back (``run``). ``SinkMetrics`` say how far behind it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from proxy.core.errors import StoreUnavailable
from proxy.core.statements import current_period
from proxy.ledger.db import EntryRefused, LedgerDB, LedgerUnavailable
from proxy.ledger.reconcile import Incomplete, repair
from proxy.obs.logs import Throttled
from proxy.obs.metrics import SinkMetrics
from proxy.storage.store import Store
from proxy.storage.streams import GROUP, LedgerStream

log = logging.getLogger(__name__)
failures = Throttled(log)
BACKOFF_MAX_S = 30.0

__all__ = ["GROUP", "Drained", "LedgerSink"]


@dataclass
class Drained:
    written: int = 0
    lag: int = 0
    pending: int = 0
    oldest_ms: int | None = None  # when the oldest entry not yet sunk was written
    dead: int = 0  # entries moved to the dead-letter stream


class LedgerSink:
    def __init__(
        self,
        store: Store,
        db: LedgerDB,
        *,
        consumer: str = "sink-1",
        batch: int = 500,
        claim_idle_ms: int = 60_000,
        metrics: SinkMetrics | None = None,
    ) -> None:
        self.metrics = metrics or SinkMetrics()
        self.store = store
        self.db = db
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.stream = LedgerStream(store, consumer)
        # Redis's run id as last seen, and the orgs whose counters must be rebuilt from the
        # ledger since it changed (a restarted Redis has only what it persisted: its
        # counters may have rolled back, and strict would then pass its limits)
        self.run_id: str | None = None
        self.repair_due: set[str] = set()

    async def orgs(self) -> list[str]:
        return await self.store.org_ids()

    async def _write(
        self, org: str, stream: str, entries: list[dict[str, str]], done: Drained
    ) -> int:
        """One batch into PostgreSQL, then acknowledged and trimmed from ``stream``. A batch
        the database refuses is written entry by entry, and an entry it refuses alone goes to
        the dead-letter stream: one bad entry never holds back the others."""
        if not entries:
            return 0
        try:
            await self.db.insert(org, entries, now=time.time())
        except EntryRefused as exc:
            if len(entries) == 1:
                await self.stream.dead_letter(org, entries[0], str(exc))
                self.metrics.dead_letters.inc()
                done.dead += 1
                log.error(
                    "ledger entry refused: moved to the dead-letter stream",
                    extra={"fields": {"org": org, "entry": entries[0]["id"], "error": str(exc)}},
                )
                return 0
            return sum([await self._write(org, stream, [e], done) for e in entries])
        # only after the commit: acknowledge, then trim what is now durable
        await self.stream.done(stream, [e["id"] for e in entries])
        self.metrics.written.inc(len(entries))
        return len(entries)

    async def drain_org(self, org: str) -> Drained:
        stream = await self.stream.ensure_group(org)
        done = Drained()
        # entries a dead consumer left pending
        start = "0-0"
        while True:
            start, entries = await self.stream.claim_abandoned(
                org, self.claim_idle_ms, start, self.batch
            )
            done.written += await self._write(org, stream, entries, done)
            if start == "0-0":
                break
        # then our own pending ("0"), then new entries (">")
        for cursor in ("0", ">"):
            while entries := await self.stream.read(org, cursor, self.batch):
                done.written += await self._write(org, stream, entries, done)
        state = await self.stream.state(org)
        done.lag, done.pending = state.lag, state.pending
        done.oldest_ms = await self.stream.oldest_ms(org)
        return done

    async def drain(self) -> dict[str, Drained]:
        """One pass over every org. An org whose pass fails is passed over (and looked at
        again next pass); when Redis or PostgreSQL is unavailable, the pass raises after
        trying every org, so that the caller backs off."""
        out: dict[str, Drained] = {}
        unavailable: StoreUnavailable | None = None
        orgs = await self.orgs()
        await self._watch_restarts(orgs)
        for org in orgs:
            try:
                out[org] = await self.drain_org(org)
                if org in self.repair_due:
                    await self._repair(org)
            except StoreUnavailable as exc:
                self.stream.forget(org)  # its group is checked again next time
                unavailable = exc
        self._measure(out)
        if unavailable is not None:
            raise unavailable
        self.metrics.passed(time.time())
        return out

    async def _watch_restarts(self, orgs: list[str]) -> None:
        run_id = await self.store.run_id()
        if self.run_id is not None and run_id != self.run_id:
            self.metrics.redis_restarts.inc()
            log.warning(
                "Redis restarted: rebuilding every org's counters from the ledger",
                extra={"fields": {"orgs": len(orgs)}},
            )
            self.repair_due.update(orgs)
            self.stream.forget()  # the consumer groups may be gone with what it lost
        self.run_id = run_id

    async def _repair(self, org: str) -> None:
        """The org's counters of this month, rebuilt from the ledger (everything in the
        stream was just sunk); tried again next pass while requests are writing."""
        try:
            changed = await repair(self.store, self.db, org, current_period(time.time()))
        except Incomplete:
            return
        self.repair_due.discard(org)
        self.metrics.repairs.inc()
        if changed:
            log.warning(
                "counters rebuilt from the ledger after a Redis restart",
                extra={"fields": {"org": org, "changed": len(changed)}},
            )

    def _measure(self, result: dict[str, Drained]) -> None:
        m = self.metrics
        m.lag_entries.set(sum(d.lag + d.pending for d in result.values()))
        oldest = [d.oldest_ms for d in result.values() if d.oldest_ms is not None]
        m.lag_seconds.set(max(0.0, time.time() - min(oldest) / 1000) if oldest else 0.0)

    async def run(self, *, once: bool, interval_s: float = 1.0) -> dict[str, Drained]:
        """Pass after pass, every ``interval_s``; ``once``: one pass, and its result (an
        outage raises). Otherwise nothing stops it: a pass that finds Redis or PostgreSQL
        unavailable is counted and tried again after a backoff (to 30 s), until they are
        back — it resumes where it was, as the streams keep what it has not acknowledged."""
        failed = 0
        while True:
            try:
                result = await self.drain()
            except StoreUnavailable as exc:
                if once:
                    raise
                kind = "postgres" if isinstance(exc, LedgerUnavailable) else "redis"
                self.metrics.errors.labels(kind).inc()
                failed += 1
                wait = min(BACKOFF_MAX_S, interval_s * 2**failed)
                failures.warning(
                    kind, "ledger sink pass failed: retrying", error=exc.message, retry_s=wait
                )
                await asyncio.sleep(wait)
                continue
            failed = 0
            written = sum(d.written for d in result.values())
            lag = sum(d.lag + d.pending for d in result.values())
            log.info(
                "ledger sink pass",
                extra={"fields": {"orgs": len(result), "written": written, "lag": lag}},
            )
            if once:
                return result
            await asyncio.sleep(interval_s)


async def connect_ledger(url: str, once: bool, metrics: SinkMetrics) -> LedgerDB:
    """The ledger database, waited for (with backoff) when it is not up yet; ``once``: the
    first failure raises."""
    failed = 0
    while True:
        try:
            return await LedgerDB.connect(url)
        except StoreUnavailable:
            if once:
                raise
            metrics.errors.labels("postgres").inc()
            failed += 1
            wait = min(BACKOFF_MAX_S, 0.5 * 2**failed)
            failures.warning("postgres", "ledger database unavailable: retrying", retry_s=wait)
            await asyncio.sleep(wait)
