"""Redis holds what is in flight and a replay window, nothing that grows with history: a
request's record expires whole after ``policy.replay_window_s``, the reservation index holds
only live reservations, and a replay past the window charges nothing twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.core.pricing import Usage
from proxy.http.appkeys import METER
from proxy.metering.meter import Meter
from proxy.storage.keys import op_key
from proxy.storage.model import Op
from tests.conftest import Proxy, ProxyFactory, message
from tests.functional.helpers import eventually, ledger_sum
from tests.functional.test_extra_usage import exhaust_seat, settings

WINDOW_S = 2


async def extra_usage_org(proxy: Proxy) -> tuple[str, dict[str, str]]:
    """A Team org with credit, extra usage on, one member on included usage (bea) and one whose
    seat is used up (ann: every request on extra usage)."""
    org = await proxy.org("team")
    keys = {m: await proxy.member(org, m) for m in ("ann", "bea")}
    proxy.store.pinned_now = int(time.time())
    await exhaust_seat(proxy.store, org, "ann")
    proxy.store.pinned_now = 0
    await settings(proxy, org, enabled=True)
    status, body = await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        json={"amount": "50.00", "idempotency_key": "p1"},
    )
    assert status in (200, 201), body
    return org, keys


async def op_keys(proxy: Proxy, org: str) -> list[str]:
    """The org's operation keys Redis still holds (a reload or purchase included)."""
    prefix = proxy.store.keys(org).ops
    return [k.decode() async for k in proxy.store.client.scan_iter(match=prefix + "*")]


async def test_settled_requests_leave_only_their_ledger_entries_once_the_window_passed(
    proxy_factory: ProxyFactory,
) -> None:
    proxy = await proxy_factory(policy={"replay_window_s": WINDOW_S})
    org, keys = await extra_usage_org(proxy)
    k = proxy.store.keys(org)
    results = await asyncio.gather(
        *(
            proxy.post(keys["ann" if i % 2 else "bea"], message(stream=i % 4 == 1))
            for i in range(12)
        )
    )
    assert [r[0] for r in results] == [200] * 12
    await proxy.settled()
    ops = await proxy.store.operations(org)
    assert len(ops) == 12 and {op["s"] for op in ops.values()} == {Op.SETTLED}
    assert {op["mode"] for op in ops.values()} == {"included", "extra_usage"}
    # the reservation index holds live reservations only: none is left
    assert await proxy.store.client.zcard(k.due) == 0
    for rid in ops:
        assert 0 < await proxy.store.client.ttl(op_key(k, rid)) <= WINDOW_S
    charged = await ledger_sum(proxy.store, org)
    assert charged > 0

    async def expired() -> bool:
        return not [key for key in await op_keys(proxy, org) if ":op:purchase:" not in key]

    await eventually(expired, within=WINDOW_S + 10)
    assert await proxy.store.operations(org) == {}
    # past the window a settlement of one of them finds nothing to charge: never twice
    rid = next(iter(ops))
    reply, _ = proxy.store.settle(org, rid, cost=999, model="m", usage={})
    with pytest.raises(Exception, match="unknown_reservation"):
        await reply
    assert await ledger_sum(proxy.store, org) == charged
    # what is left is the org's own keys: settings, members, credentials, its streams and
    # the purchase's idempotency record (check_id_window_s)
    left = {key.decode() async for key in proxy.store.client.scan_iter(match=f"*{{{org}}}*")}
    assert left <= {k.org, k.members, k.creds, k.ledger, k.audit, op_key(k, "purchase:p1")}


async def test_a_live_reservation_is_in_the_index_until_it_is_settled(proxy: Proxy) -> None:
    org, _ = await extra_usage_org(proxy)
    store, k = proxy.store, proxy.store.keys(org)
    a = await store.admit(
        org, "req-live", who="m", credential="ann", max_cost=10**9, est_cost=10**8
    )
    assert a["mode"] == "extra_usage" and a.nano("amount") == 10**8
    assert await store.client.zrange(k.due, 0, -1) == [f"{10**8}|ann|req-live".encode()]
    assert int(await store.client.hget(k.org, "rc")) > time.time()
    record = await store.operation(org, "req-live")
    assert record is not None and record["s"] == Op.RESERVED and record["a"] == str(10**8)
    # an included request is never in the index: it holds nothing
    b = await store.admit(org, "req-inc", who="m", credential="bea", max_cost=10**9, est_cost=1)
    assert b["mode"] == "included"
    assert await store.client.zcard(k.due) == 1
    await store.settle(org, "req-live", cost=5, model="m", usage={})[0]
    await store.settle(org, "req-inc", cost=5, model="m", usage={})[0]
    assert await store.client.zcard(k.due) == 0
    assert (await store.member_fields(org, "ann", ("eu_res",))).get("eu_res") == "0"


async def test_an_expired_reservation_is_reclaimed_from_its_index_entry_alone(
    proxy: Proxy,
) -> None:
    """A crashed proxy's reservation: the next admission past its expiry gives it back; its
    settlement, later, charges in full and says it had expired."""
    org, _ = await extra_usage_org(proxy)
    store, k = proxy.store, proxy.store.keys(org)
    now = int(time.time())
    store.pinned_now = now
    await store.admit(org, "req-lost", who="m", credential="ann", max_cost=10**9, est_cost=10**8)
    assert int(await store.client.hget(k.org, "eu_res")) == 10**8
    store.pinned_now = now + proxy.config.policy.reservation_ttl_s + 1
    await store.admit(org, "req-next", who="m", credential="ann", max_cost=10**9, est_cost=7)
    assert await store.client.zrange(k.due, 0, -1) == [b"7|ann|req-next"]
    assert int(await store.client.hget(k.org, "eu_res")) == 7
    ttl = proxy.config.policy.reservation_ttl_s
    assert int(await store.client.hget(k.org, "rc")) == store.pinned_now + ttl
    result = await store.settle(org, "req-lost", cost=10**8 + 5, model="m", usage={})[0]
    assert (result["expired"], result["overshoot"]) == ("1", str(10**8 + 5))
    assert int(await store.client.hget(k.org, "eu_res")) == 7


async def test_a_lease_keeps_a_long_requests_record_alive(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory(policy={"replay_window_s": WINDOW_S})
    org, _ = await extra_usage_org(proxy)
    store, k = proxy.store, proxy.store.keys(org)
    await store.admit(org, "req-long", who="m", credential="bea", max_cost=10**9, est_cost=1)
    ttl = await store.client.ttl(op_key(k, "req-long"))
    assert proxy.config.policy.reservation_ttl_s < ttl <= proxy.config.policy.reservation_ttl_s + 2
    await store.client.expire(op_key(k, "req-long"), 5)
    reply = await store.renew(org, "req-long")
    assert reply["exp"]  # an included request holds nothing, but its record is kept
    assert await store.client.ttl(op_key(k, "req-long")) > 5
    await store.settle(org, "req-long", cost=3, model="m", usage={})[0]
    assert (await store.renew(org, "req-long"))["exp"] == ""


def journal_entry(org: str, rid: str, age_s: float) -> dict[str, Any]:
    return {
        "t": int(time.time() - age_s),
        "rid": rid,
        "org": org,
        "key": "",
        "model": "claude-sonnet-4-5",
        "usage": Usage(input_tokens=100, output_tokens=10).as_dict(),
    }


@pytest.mark.parametrize(
    ("ledger", "outcome", "charged"),
    [(None, "refused", False), (False, "charged", True), (True, "known", False)],
)
async def test_a_journal_replay_past_the_window_asks_the_durable_ledger(
    proxy_factory: ProxyFactory, ledger: bool | None, outcome: str, charged: bool
) -> None:
    proxy = await proxy_factory(policy={"replay_window_s": 120})
    org = await proxy.org("team")
    await proxy.member(org, "ann")
    meter: Meter = proxy.server.app[METER]  # type: ignore[union-attr]
    asked: list[tuple[str, str]] = []

    async def ledger_has(o: str, op: str) -> bool:
        asked.append((o, op))
        if ledger is None:
            raise ConnectionError("PostgreSQL is down")
        return ledger

    meter.ledger_has = ledger_has
    whois = await proxy.store.client.hgetall(proxy.store.keys(org).creds)
    key_hash = next(f.decode()[2:] for f in whois if f.startswith(b"k:"))
    entry = {**journal_entry(org, "req-old", age_s=3600), "key": key_hash}
    await meter.replay(entry)
    assert asked == [(org, "req-old")]
    assert (len(await proxy.store.ledger(org)) == 1) is charged
    text = await (await proxy.session.get(proxy.url + "/metrics")).text()
    assert f'eup_late_replays_total{{outcome="{outcome}"}} 1.0' in text
    # within the window nothing is asked: Redis recognises a replay by itself
    asked.clear()
    await meter.replay({**journal_entry(org, "req-new", age_s=5), "key": key_hash})
    await meter.replay({**journal_entry(org, "req-new", age_s=5), "key": key_hash})
    assert asked == []
    assert len(await proxy.store.ledger(org)) == (2 if charged else 1)


async def test_requests_in_flight_are_recorded_unless_turned_off(
    proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """policy.journal_in_flight: a stream's record (its start, progress, end) is written to
    the process's journal; turned off, nothing is, and the request is charged the same."""
    for on in (True, False):
        folder = tmp_path / str(on)
        folder.mkdir()
        proxy = await proxy_factory(policy={"journal_dir": str(folder), "journal_in_flight": on})
        org = await proxy.org("team")
        key = await proxy.member(org, "ann")
        status, _, _ = await proxy.post(
            key, message(stream=True), headers={"x-mock-events": "5", "x-mock-delay-ms": "5"}
        )
        assert status == 200
        await proxy.settled()
        lines = b"".join(p.read_bytes() for p in folder.glob("journal-*.jsonl")).splitlines()
        kinds = [orjson.loads(line)["k"] for line in lines]
        assert (kinds[:1] + kinds[-1:] == ["a", "d"]) if on else kinds == []
        assert len(await proxy.store.ledger(org)) == 1


async def test_a_settlement_of_nothing_on_extra_usage_draws_nothing(proxy: Proxy) -> None:
    """A check API settlement of zero tokens on a Team member's extra usage: charged $0, the
    balance as it was (the script writes the draw as a decimal string: never "-0")."""
    org, _ = await extra_usage_org(proxy)
    store = proxy.store
    before = (await store.org_settings(org))["balance"]
    await store.admit(org, "req-zero", who="m", credential="ann", max_cost=10**9, est_cost=10**8)
    result = await store.settle(org, "req-zero", cost=0, model="m", usage={})[0]
    assert (result["mode"], result["cost"], result["balance"]) == ("extra_usage", "0", before)
    assert (await store.org_settings(org))["balance"] == before
    assert int((await store.member_fields(org, "ann", ("eu_res",)))["eu_res"]) == 0
