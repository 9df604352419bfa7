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
from typing import Any

from redis.exceptions import ResponseError

from proxy.ledger.db import LedgerDB
from proxy.storage.keys import org_keys, orgs_index
from proxy.storage.store import RedisClient

log = logging.getLogger(__name__)

GROUP = "ledger-sink"


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _entries(raw: list[Any]) -> list[dict[str, str]]:
    out = []
    for entry_id, fields in raw:
        if fields is None:  # deleted meanwhile
            continue
        out.append({"id": _s(entry_id), **{_s(k): _s(v) for k, v in fields.items()}})
    return out


@dataclass
class Drained:
    written: int = 0
    lag: int = 0
    pending: int = 0


class LedgerSink:
    def __init__(
        self,
        client: RedisClient,
        db: LedgerDB,
        *,
        prefix: str,
        consumer: str = "sink-1",
        batch: int = 500,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.db = db
        self.prefix = prefix
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self._grouped: set[str] = set()

    async def orgs(self) -> list[str]:
        return sorted(_s(o) for o in await self.client.smembers(orgs_index(self.prefix)))

    async def _group(self, stream: str) -> None:
        if stream in self._grouped:
            return
        try:
            await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(stream)

    async def _write(self, org: str, stream: str, entries: list[dict[str, str]]) -> int:
        if not entries:
            return 0
        await self.db.insert(org, entries, now=time.time())
        ids = [e["id"] for e in entries]
        # only after the commit: acknowledge, then trim what is now durable
        await self.client.xack(stream, GROUP, *ids)
        await self.client.xdel(stream, *ids)
        return len(entries)

    async def drain_org(self, org: str) -> Drained:
        stream = org_keys(self.prefix, org).ledger
        await self._group(stream)
        done = Drained()
        # entries a dead consumer left pending
        start = "0-0"
        while True:
            reply = await self.client.xautoclaim(
                stream, GROUP, self.consumer, self.claim_idle_ms, start_id=start, count=self.batch
            )
            start = _s(reply[0])
            done.written += await self._write(org, stream, _entries(reply[1]))
            if start == "0-0":
                break
        # then our own pending ("0"), then new entries (">")
        for cursor in ("0", ">"):
            while True:
                read: Any = await self.client.xreadgroup(
                    GROUP, self.consumer, {stream: cursor}, count=self.batch
                )
                entries = _entries(read[0][1]) if read else []
                if not entries:
                    break
                done.written += await self._write(org, stream, entries)
        for info in await self.client.xinfo_groups(stream):
            if _s(info["name"]) == GROUP:
                done.lag = int(info.get("lag") or 0)
                done.pending = int(info.get("pending") or 0)
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
