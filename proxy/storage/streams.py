"""The ledger streams as the sink consumes them: one consumer group per org's stream.

Entries are read through the group (those a dead consumer left pending, this consumer's own
pending ones, then new ones), acknowledged and deleted only once the caller has made them
durable. Part of the storage layer: Redis errors become ``StoreUnavailable`` here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from proxy.storage.store import Store, as_str, stream_entries

GROUP = "ledger-sink"


@dataclass
class GroupState:
    lag: int = 0  # entries not yet delivered to the group
    pending: int = 0  # delivered, not yet acknowledged


class LedgerStream:
    def __init__(self, store: Store, consumer: str) -> None:
        self.store = store
        self.client = store.client
        self.consumer = consumer
        self._grouped: set[str] = set()

    def key(self, org: str) -> str:
        return self.store.keys(org).ledger

    async def ensure_group(self, org: str) -> str:
        """The org's stream key, with the sink's group on it."""
        stream = self.key(org)
        if stream in self._grouped:
            return stream
        await self.store._cmd(self._create_group(stream))
        self._grouped.add(stream)
        return stream

    async def _create_group(self, stream: str) -> None:
        try:
            await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:  # an answer, not an outage: the group is there already
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim_abandoned(
        self, org: str, idle_ms: int, start: str, count: int
    ) -> tuple[str, list[dict[str, str]]]:
        """Entries another consumer left pending for ``idle_ms``: (the next cursor, entries);
        the cursor is "0-0" when the scan is done."""
        reply = await self.store._cmd(
            self.client.xautoclaim(
                self.key(org), GROUP, self.consumer, idle_ms, start_id=start, count=count
            )
        )
        return as_str(reply[0]), stream_entries(reply[1])

    async def read(self, org: str, cursor: str, count: int) -> list[dict[str, str]]:
        """``cursor`` "0": this consumer's pending entries; ">": new ones."""
        read: Any = await self.store._cmd(
            self.client.xreadgroup(GROUP, self.consumer, {self.key(org): cursor}, count=count)
        )
        return stream_entries(read[0][1]) if read else []

    async def done(self, stream: str, ids: list[str]) -> None:
        """Acknowledge, then trim: only for entries already durable elsewhere."""
        await self.store._cmd(self.client.xack(stream, GROUP, *ids))
        await self.store._cmd(self.client.xdel(stream, *ids))

    async def dead_letter(self, org: str, entry: dict[str, str], error: str) -> None:
        """Keep an entry the durable ledger refused in the org's dead-letter stream (its
        fields as they were, with the reason and the id it had), then take it off the ledger
        stream: the sink goes on with the others. The dead-letter stream keeps the newest
        10,000."""
        stream = self.key(org)
        fields: dict[Any, Any] = {k: v for k, v in entry.items() if k != "id"}
        fields.update(dead_error=error[:500], dead_id=entry["id"])
        await self.store._cmd(
            self.client.xadd(self.store.keys(org).dead, fields, maxlen=10_000, approximate=True)
        )
        await self.done(stream, [entry["id"]])

    async def oldest_ms(self, org: str) -> int | None:
        """When the oldest entry still in the org's ledger stream was written (ms), or None."""
        rows = await self.store._cmd(self.client.xrange(self.key(org), count=1))
        return int(as_str(rows[0][0]).split("-")[0]) if rows else None

    def forget(self, org: str | None = None) -> None:
        """Check the group (of ``org``; None: every org's) again on the next pass: Redis may
        have come back without it."""
        if org is None:
            self._grouped.clear()
        else:
            self._grouped.discard(self.key(org))

    async def state(self, org: str) -> GroupState:
        for info in await self.store._cmd(self.client.xinfo_groups(self.key(org))):
            if as_str(info["name"]) == GROUP:
                return GroupState(int(info.get("lag") or 0), int(info.get("pending") or 0))
        return GroupState()
