"""Auto-pipelining: concurrent script calls share writes, and each gets its own reply."""

from __future__ import annotations

import asyncio

from tests.conftest import Proxy


async def test_each_concurrent_call_gets_its_own_reply_in_few_round_trips(proxy: Proxy) -> None:
    store = proxy.store
    assert store.pipeliner is not None
    org = await proxy.org("team")
    await proxy.member(org, "pia")
    info = await store.client.info("stats")
    before = int(info["total_net_input_bytes"]), int(info["total_commands_processed"])
    sends = 0
    original = store.pipeliner._exchange

    async def counting(batch):  # type: ignore[no-untyped-def]
        nonlocal sends
        sends += 1
        return await original(batch)

    store.pipeliner._exchange = counting  # type: ignore[method-assign]
    rids = [f"pipe-{i}" for i in range(100)]
    replies = await asyncio.gather(
        *(
            store.admit(org, rid, who="m", credential="pia", max_cost=10, est_cost=10)
            for rid in rids
        )
    )
    assert [a["rid"] for a in replies] == rids  # every caller got its own answer
    assert sends < 10  # a hundred calls, a handful of writes
    info = await store.client.info("stats")
    assert int(info["total_commands_processed"]) - before[1] >= 100
    # a bad call fails alone: an unknown member does not spoil the batch
    good, bad = await asyncio.gather(
        store.admit(org, "pipe-ok", who="m", credential="pia", max_cost=1, est_cost=1),
        store.admit(org, "pipe-bad", who="m", credential="nobody", max_cost=1, est_cost=1),
        return_exceptions=True,
    )
    assert not isinstance(good, BaseException) and good["rid"] == "pipe-ok"
    assert getattr(bad, "code", None) == "unknown_member"
