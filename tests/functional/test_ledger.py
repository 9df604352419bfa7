"""The durable ledger against a real PostgreSQL (started by the suite) and real Redis."""

from __future__ import annotations

import asyncio
import calendar
import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.ledger.db import LedgerDB
from proxy.ledger.reconcile import reconcile
from proxy.ledger.sink import GROUP, Drained, LedgerSink
from proxy.tools.embedded import RedisServer
from tests.conftest import Proxy, ProxyFactory, message
from tests.functional.test_extra_usage import exhaust_seat, settings
from tests.servers import PostgresServer

BIN = Path(sys.executable).parent / "extra-usage-proxy"
OCT = calendar.timegm((2026, 10, 15, 12, 0, 0))


@pytest.fixture
async def billing(proxy_factory: ProxyFactory, postgres: PostgresServer, db: LedgerDB) -> Proxy:
    return await proxy_factory(ledger={"database_url": postgres.url})


async def team_traffic(proxy: Proxy, *, now: int = 0, requests: int = 6) -> str:
    """A Team org with a purchase, included usage, extra usage and an auto-reload."""
    proxy.store.pinned_now = now
    org = await proxy.org("team")
    key = await proxy.member(org, "ann")
    await proxy.member(org, "bob", tier="premium")
    await settings(
        proxy,
        org,
        enabled=True,
        auto_reload={"enabled": True, "threshold": "2.00", "amount": "2.00"},
    )
    await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        json={"amount": "3.00", "idempotency_key": "first"},
    )
    for i in range(requests):
        if i == requests // 2:
            proxy.store.pinned_now = now or 1_800_000_000
            await exhaust_seat(proxy.store, org, "ann")
            proxy.store.pinned_now = now
        status, _, _ = await proxy.post(
            key,
            message(max_tokens=40_000, stream=i % 2 == 0),
            headers={"x-mock-output-tokens": "40000", "x-mock-input-tokens": "100"},
        )
        assert status == 200
        await proxy.settled()  # an auto-reload is asked for once the charge is answered
    return org


def sink_for(proxy: Proxy, db: LedgerDB, **kw: Any) -> LedgerSink:
    return LedgerSink(proxy.store, db, claim_idle_ms=0, **kw)


async def test_migrate_is_idempotent(db: LedgerDB) -> None:
    assert await db.migrate() == []


async def test_sink_moves_everything_once_and_totals_agree(billing: Proxy, db: LedgerDB) -> None:
    org = await team_traffic(billing)
    entries = await billing.store.ledger(org)
    kinds = [e["kind"] for e in entries]
    assert kinds.count("purchase") == 1 and kinds.count("reload") >= 1
    result = await sink_for(billing, db, batch=3).drain()
    assert result[org].written == len(entries)
    assert (result[org].lag, result[org].pending) == (0, 0)
    assert await billing.store.client.xlen(billing.store.keys(org).ledger) == 0  # trimmed
    assert len(await db.op_ids(org)) == len(entries)
    assert await reconcile(billing.store, db, org, _period()) == []
    # statement totals = ledger sum = Redis counters
    status, doc = await billing.admin("GET", f"/admin/v1/orgs/{org}/statements/{_period()}")
    assert status == 200, doc
    extra = sum(int(e["cost"]) for e in entries if e.get("mode") == "extra_usage")
    included = sum(int(e["cost"]) for e in entries if e.get("mode") == "included")
    s = await billing.store.org_settings(org)
    assert doc["totals"]["extra_usage"] == _usd(extra) == _usd(int(s["spend"]))
    assert doc["totals"]["included_usage"] == _usd(included)
    assert doc["status"] == "open"
    assert doc["opening_balance"] == "0.00"
    assert doc["closing_balance"] == _usd(int(s["balance"]))
    assert {c["kind"] for c in doc["credits"]} == {"purchase", "reload"}
    assert {(line["member_id"], line["mode"]) for line in doc["lines"]} == {
        ("ann", "included"),
        ("ann", "extra_usage"),
    }
    async with billing.session.get(
        billing.url + f"/admin/v1/orgs/{org}/statements/{_period()}.csv",
        headers={"authorization": "Bearer operator-test-token"},
    ) as r:
        assert r.status == 200
        rows = list(csv.reader(io.StringIO(await r.text())))
    assert rows[0][:3] == ["period", "member_id", "tier"]
    assert rows[-1][-3] == doc["totals"]["extra_usage"]
    assert rows[-1][-1] == doc["totals"]["estimated"] == "0.00"


async def test_a_crash_between_commit_and_ack_redelivers_without_duplicates(
    billing: Proxy, db: LedgerDB
) -> None:
    org = await team_traffic(billing)
    entries = await billing.store.ledger(org)

    class Crashing(LedgerSink):
        async def _write(
            self, org: str, stream: str, batch: list[dict[str, str]], done: Drained
        ) -> int:
            if not batch:
                return 0
            await self.db.insert(org, batch, now=0)
            raise RuntimeError("killed after the commit, before the XACK")

    with pytest.raises(RuntimeError):
        await Crashing(billing.store, db, batch=4).drain_org(org)
    info = await billing.store.client.xpending(billing.store.keys(org).ledger, GROUP)
    assert info["pending"] == 4  # delivered, written, not acknowledged
    # duplicate delivery: the same entries again, by the same and by another consumer
    result = await sink_for(billing, db, consumer="sink-2").drain_org(org)
    assert result.written == len(entries)
    assert len(await db.op_ids(org)) == len(entries)
    assert await reconcile(billing.store, db, org, _period()) == []


async def test_the_sink_killed_mid_batch_loses_and_doubles_nothing(
    billing: Proxy, db: LedgerDB, postgres: PostgresServer, redis_server: RedisServer
) -> None:
    orgs = [await team_traffic(billing, requests=10) for _ in range(4)]
    total = 0
    for o in orgs:
        total += len(await billing.store.ledger(o))
    env = {**os.environ, "REDIS_URL": redis_server.url, "DATABASE_URL": postgres.url}
    proc = subprocess.Popen(
        [str(BIN), "ledger-sink", "--interval", "0.01"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.sleep(0.6)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    out = subprocess.run(
        [str(BIN), "ledger-sink", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    sunk = 0
    for o in orgs:
        sunk += len(await db.op_ids(o))
    assert sunk == total
    for o in orgs:
        assert await billing.store.client.xlen(billing.store.keys(o).ledger) == 0
        assert await reconcile(billing.store, db, o, _period()) == []


async def test_a_redis_restart_between_passes(
    proxy_factory: ProxyFactory, db: LedgerDB, postgres: PostgresServer
) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis = RedisServer(*aof).start()
    try:
        proxy = await proxy_factory(redis={"url": redis.url}, ledger={"database_url": postgres.url})
        org = await team_traffic(proxy)
        first = len(await proxy.store.ledger(org))
        sink = sink_for(proxy, db)
        await sink.drain_org(org)
        redis.kill()
        redis = RedisServer(*aof, port=redis.port, directory=redis.dir).start()
        key = await proxy.member(org, "cy")
        status, _, _ = await proxy.post(key, message())
        assert status == 200
        result = await sink.drain_org(org)  # the group survived the restart (AOF)
        assert result.written == 1
        assert len(await db.op_ids(org)) == first + 1
        assert await reconcile(proxy.store, db, org, _period()) == []
    finally:
        redis.cleanup()


async def test_a_closed_month_is_frozen(billing: Proxy, db: LedgerDB) -> None:
    org = await team_traffic(billing, now=OCT)
    await sink_for(billing, db).drain_org(org)
    status, october = await billing.admin("GET", f"/admin/v1/orgs/{org}/statements/2026-10")
    assert status == 200
    assert october["status"] == "closed"
    assert october["totals"]["extra_usage"] != "0.00"
    # a late charge for October arrives after the freeze
    billing.store.pinned_now = OCT + 3600
    key = await billing.member(org, "late")
    status, _, _ = await billing.post(key, message(max_tokens=10))
    assert status == 200
    await sink_for(billing, db).drain_org(org)
    status, again = await billing.admin("GET", f"/admin/v1/orgs/{org}/statements/2026-10")
    assert again == october  # never changes
    status, current = await billing.admin("GET", f"/admin/v1/orgs/{org}/statements/{_period()}")
    assert [line["member_id"] for line in current["lines"]] == ["late"]  # billed now
    status, usage = await billing.admin("GET", f"/admin/v1/orgs/{org}/usage?period=2026-10")
    assert usage["source"] == "ledger"
    ann = next(m for m in usage["members"] if m["member_id"] == "ann")
    assert ann["extra_usage"] == october["totals"]["extra_usage"]


async def test_reconcile_reports_and_repairs(
    billing: Proxy, db: LedgerDB, postgres: PostgresServer, redis_server: RedisServer
) -> None:
    org = await team_traffic(billing)
    await sink_for(billing, db).drain_org(org)
    key = await billing.member(org, "dee")
    await billing.post(key, message())  # one entry not sunk yet: still counted
    k = billing.store.keys(org)
    await billing.store.client.hincrby(k.org, "spend", 12345)
    await billing.store.client.hincrby(k.members, "dee|inc", -7)
    env = {**os.environ, "REDIS_URL": redis_server.url, "DATABASE_URL": postgres.url}
    out = subprocess.run([str(BIN), "reconcile", org], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert '"counter": "org:spend"' in out.stdout and '"difference": 12345' in out.stdout
    assert '"counter": "member:dee:included"' in out.stdout
    out = subprocess.run(
        [str(BIN), "reconcile", org, "--repair"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([str(BIN), "reconcile", org], env=env, capture_output=True, text=True)
    assert out.returncode == 0
    assert '"agree": true' in out.stdout
    audit = await billing.store.audit(org)
    assert audit[0]["action"] == "reconcile.repair"


async def test_repair_refuses_an_incomplete_view_and_writes_nothing(
    billing: Proxy, db: LedgerDB, postgres: PostgresServer, redis_server: RedisServer
) -> None:
    org = await team_traffic(billing)
    k = billing.store.keys(org)
    # 11,000 entries not sunk yet (and the counter they add up to): all read, paged, so
    # the view agrees
    await billing.member(org, "zed")
    await billing.store.client.hset(k.members, mapping={"zed|inc_p": _period(), "zed|inc": 11_000})
    pipe = billing.store.client.pipeline(transaction=False)
    for i in range(11_000):
        pipe.xadd(
            k.ledger,
            {
                "op": f"x{i}",
                "kind": "usage",
                "ts": "1",
                "period": _period(),
                "member": "zed",
                "tier": "standard",
                "mode": "included",
                "cost": "1",
                "balance_delta": "0",
                "usage": "{}",
            },
        )
    await pipe.execute()
    env = {**os.environ, "REDIS_URL": redis_server.url, "DATABASE_URL": postgres.url}
    out = subprocess.run([str(BIN), "reconcile", org], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # an entry trimmed from the stream before the sink moved it: the view is incomplete
    await billing.store.client.xtrim(k.ledger, maxlen=10)
    before = await billing.store.org_settings(org)
    audit = await billing.store.audit(org)
    out = subprocess.run(
        [str(BIN), "reconcile", org, "--repair"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 3
    assert "not repaired, nothing written" in out.stderr
    assert "left the stream without reaching PostgreSQL" in out.stderr
    assert await billing.store.org_settings(org) == before
    assert await billing.store.audit(org) == audit


def _period() -> str:
    import time

    from proxy.core.statements import current_period

    return current_period(time.time())


def _usd(n: int) -> str:
    from proxy.core.money import format_usd

    return format_usd(n)


async def test_purchases_and_reloads_of_all_time_page_from_the_ledger(
    billing: Proxy, db: LedgerDB
) -> None:
    """Credits come from the ledger, newest first, a page at a time: a thousand audit entries
    written after them hide none (the page once rebuilt them from the newest audit entries);
    a bad cursor or page size is a 400, and only the org's own admins read them."""
    org = await team_traffic(billing)
    purchases = f"/admin/v1/orgs/{org}/extra-usage/purchases"
    for i in range(4):
        status, _ = await billing.admin(
            "POST", purchases, json={"amount": f"1.0{i}", "idempotency_key": f"more-{i}"}
        )
        assert status == 201
    await sink_for(billing, db).drain_org(org)
    for i in range(1001):  # bury every credit under the audit log's newest 1,000
        await settings(billing, org, monthly_limit=f"{1000 + i}.00")
    _, audit = await billing.admin("GET", f"/admin/v1/orgs/{org}/audit?limit=1000")
    assert not any(e["action"].startswith("credit.") for e in audit["entries"])

    want = await db.pool.fetch(
        "SELECT op_id, ts, balance_delta_nano FROM ledger_entries WHERE org_id = $1 "
        "AND kind IN ('purchase', 'reload') ORDER BY ts DESC, op_id DESC",
        org,
    )
    assert len(want) >= 6  # the first purchase, four more, at least one reload
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        path = f"/admin/v1/orgs/{org}/extra-usage/credits?limit=2"
        status, page = await billing.admin("GET", path + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, page
        seen += page["credits"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(c["kind"] + ":" + c["reference"], c["at"]) for c in seen] == [
        (r["op_id"], int(r["ts"].timestamp())) for r in want
    ]
    assert [c["amount"] for c in seen] == [_usd(r["balance_delta_nano"]) for r in want]
    assert {c["reference"] for c in seen if c["kind"] == "purchase"} >= {"first", "more-3"}
    assert {c["by"] for c in seen if c["kind"] == "purchase"} == {"operator"}

    for query, word in (
        ("?cursor=not-a-cursor", "cursor"),
        ("?cursor=1-" + "a" * 1300, "cursor"),
        ("?cursor=1-abc", "cursor"),  # half a byte
        ("?cursor=1%0A-", "cursor"),  # a newline
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=1e3", "limit"),
    ):
        status, err = await billing.admin("GET", f"/admin/v1/orgs/{org}/extra-usage/credits{query}")
        assert status == 400 and word in err["error"]["message"], (query, err)
    other = await billing.org("team")
    await billing.member(other, "olga", role="primary_owner")
    _, tok = await billing.admin("POST", f"/admin/v1/orgs/{other}/members/olga/admin-tokens")
    status, _ = await billing.admin(
        "GET", f"/admin/v1/orgs/{org}/extra-usage/credits", token=tok["token"]
    )
    assert status in (403, 404)
