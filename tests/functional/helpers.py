"""Helpers for functional tests: expected costs, and the invariant counters = ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.core.pricing import PriceTable, Usage
from proxy.storage.store import Store


def expected_cost(prices: PriceTable, body: dict[str, Any], output: int = 50) -> int:
    """What the mock upstream reports for this body, priced."""
    tokens = max(1, len(orjson.dumps(body["messages"])) // 4)
    return prices.cost(
        body["model"],
        Usage(input_tokens=tokens, output_tokens=output, cache_creation_5m=0, cache_creation_1h=0),
    )


async def member_counters(store: Store, org: str, member: str) -> dict[str, int]:
    names = ("s_used", "w_used", "inc", "spend", "eu_res")
    f = await store.member_fields(org, member, names)
    return {n: int(f.get(n, "0")) for n in names}


async def ledger_sum(
    store: Store, org: str, *, mode: str | None = None, member: str | None = None
) -> int:
    rows = await store.ledger(org)
    return sum(
        int(r["cost"])
        for r in rows
        if r["kind"] == "usage"
        and (mode is None or r["mode"] == mode)
        and (member is None or r["member"] == member)
    )


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
