"""``extra-usage-proxy ledger-sink``: moves every org's ledger stream into PostgreSQL.

One consumer group per stream. For each org the sink takes, in order: entries left pending
by a consumer that died (XAUTOCLAIM, once they are idle long enough), its own pending entries
(a crash of this consumer between the commit and the XACK), then new entries. A batch is
written in one transaction, and only after the commit is it acknowledged and deleted from
the stream — so a crash at any point redelivers, and the (org, op id) key makes a redelivered
entry a no-op. Orgs are found through the orgs index set, never by scanning the keyspace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from proxy.ledger.db import LedgerDB
from proxy.storage.store import Store
from proxy.storage.streams import GROUP, LedgerStream

log = logging.getLogger(__name__)

__all__ = ["GROUP", "Drained", "LedgerSink"]


@dataclass
class Drained:
    written: int = 0
    lag: int = 0
    pending: int = 0


class LedgerSink:
    def __init__(
        self,
        store: Store,
        db: LedgerDB,
        *,
        consumer: str = "sink-1",
        batch: int = 500,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.store = store
        self.db = db
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.stream = LedgerStream(store, consumer)

    async def orgs(self) -> list[str]:
        return await self.store.org_ids()

    async def _write(self, org: str, stream: str, entries: list[dict[str, str]]) -> int:
        """One batch into PostgreSQL, then acknowledged and trimmed from ``stream``."""
        if not entries:
            return 0
        await self.db.insert(org, entries, now=time.time())
        # only after the commit: acknowledge, then trim what is now durable
        await self.stream.done(stream, [e["id"] for e in entries])
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
            done.written += await self._write(org, stream, entries)
            if start == "0-0":
                break
        # then our own pending ("0"), then new entries (">")
        for cursor in ("0", ">"):
            while entries := await self.stream.read(org, cursor, self.batch):
                done.written += await self._write(org, stream, entries)
        state = await self.stream.state(org)
        done.lag, done.pending = state.lag, state.pending
        return done

    async def drain(self) -> dict[str, Drained]:
        return {org: await self.drain_org(org) for org in await self.orgs()}

    async def run(self, *, once: bool, interval_s: float = 1.0) -> dict[str, Drained]:
        while True:
            result = await self.drain()
            written = sum(d.written for d in result.values())
            lag = sum(d.lag + d.pending for d in result.values())
            log.info(
                "ledger sink pass",
                extra={"fields": {"orgs": len(result), "written": written, "lag": lag}},
            )
            if once:
                return result
            await asyncio.sleep(interval_s)
