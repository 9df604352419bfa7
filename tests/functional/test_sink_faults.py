"""The ledger sink under faults, against a real PostgreSQL and a real redis-server: a value
PostgreSQL refuses goes to a dead-letter stream and every other entry moves on; outages of
PostgreSQL and of Redis are waited out, counted, and the sink resumes where it was; its
/metrics and /healthz say how it is."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.ledger.db import LedgerDB
from proxy.ledger.sink import LedgerSink, connect_ledger
from proxy.obs.metrics import SinkMetrics
from proxy.tools.embedded import RedisServer
from proxy.tools.sink_health import sink_app
from tests.conftest import Proxy, ProxyFactory, message
from tests.servers import PostgresServer


async def traffic(proxy: Proxy, requests: int = 3) -> str:
    org = await proxy.org("team")
    key = await proxy.member(org, "ann")
    for _ in range(requests):
        assert (await proxy.post(key, message()))[0] == 200
    await proxy.settled()
    return org


def value(metrics: SinkMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_a_refused_entry_goes_to_dead_letters_and_nothing_else_stops(
    proxy: Proxy, db: LedgerDB
) -> None:
    """An entry with a NUL in its model (written straight into the stream, as a version
    without the edge's checks could have) among three orgs' entries: one pass moves every
    other entry, keeps the bad one in the org's dead-letter stream with the reason, counts
    it, and empties every ledger stream."""
    orgs = [await traffic(proxy) for _ in range(3)]
    store = proxy.store
    bad = dict((await store.ledger(orgs[1]))[0])
    bad_op = "poisoned-op"
    fields = {k: v for k, v in bad.items() if k not in ("id", "kind")}
    fields.update(op=bad_op, model="claude\x00sonnet", kind="usage")
    await store.client.xadd(store.keys(orgs[1]).ledger, fields)
    metrics = SinkMetrics()
    sink = LedgerSink(store, db, consumer="poison-test", claim_idle_ms=0, metrics=metrics)
    result = await sink.run(once=True)
    assert result[orgs[1]].dead == 1
    for org in orgs:  # every good entry moved, the bad one not
        assert len(await db.op_ids(org)) == 3
        assert bad_op not in await db.op_ids(org)
        assert await store.client.xlen(store.keys(org).ledger) == 0
    dead = await store.client.xrange(store.keys(orgs[1]).dead)
    assert len(dead) == 1
    entry = {k.decode(): v.decode(errors="replace") for k, v in dead[0][1].items()}
    assert entry["op"] == bad_op and "CharacterNotInRepertoire" in entry["dead_error"]
    assert value(metrics, "eup_sink_dead_letters_total") == 1
    assert sum(result[org].written for org in orgs) == 9
    assert value(metrics, "eup_sink_entries_written_total") >= 9  # (other tests' orgs too)
    assert value(metrics, "eup_sink_lag_seconds") == 0


async def test_the_sink_waits_out_postgresql_and_redis_and_resumes(
    proxy_factory: ProxyFactory, db: LedgerDB, postgres: PostgresServer
) -> None:
    """A running sink: PostgreSQL stopped, then Redis stopped; each outage is counted and
    waited out (the sink never exits), and once both are back every entry is in PostgreSQL
    exactly once."""
    redis = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        proxy = await proxy_factory(redis={"url": redis.url})
        org = await traffic(proxy)
        metrics = SinkMetrics()
        sink = LedgerSink(proxy.store, db, consumer="outage-test", claim_idle_ms=0, metrics=metrics)
        task = asyncio.create_task(sink.run(once=False, interval_s=0.05))
        await wait_for(lambda: value(metrics, "eup_sink_entries_written_total") == 3)
        postgres.stop()
        await traffic_on(proxy, org, 2)
        await wait_for(lambda: value(metrics, "eup_sink_errors_total", kind="postgres") >= 1)
        assert value(metrics, "eup_sink_lag_entries") >= 0 and not task.done()
        postgres.resume()
        await wait_for(lambda: value(metrics, "eup_sink_entries_written_total") == 5, 30)
        redis.stop()
        await wait_for(lambda: value(metrics, "eup_sink_errors_total", kind="redis") >= 1)
        assert not task.done()
        redis.start()
        await traffic_on(proxy, org, 1)
        await wait_for(lambda: value(metrics, "eup_sink_entries_written_total") == 6, 30)
        task.cancel()
        assert len(await db.op_ids(org)) == 6
        assert await proxy.store.client.xlen(proxy.store.keys(org).ledger) == 0
    finally:
        redis.cleanup()


async def traffic_on(proxy: Proxy, org: str, requests: int) -> None:
    key = await proxy.member(org, f"m{time.monotonic_ns()}")
    for _ in range(requests):
        assert (await proxy.post(key, message()))[0] == 200
    await proxy.settled()


async def wait_for(done: object, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_sinks_health_and_metrics(postgres: PostgresServer) -> None:
    metrics = SinkMetrics()
    client = TestClient(TestServer(sink_app(metrics, 1.0)))
    await client.start_server()
    try:
        r = await client.get("/healthz")
        assert r.status == 503  # no pass yet
        metrics.passed(time.time())
        r = await client.get("/healthz")
        assert r.status == 200 and (await r.json())["status"] == "ok"
        metrics.passed(time.time() - 120)  # the last pass two minutes ago: stalled
        assert (await client.get("/healthz")).status == 503
        text = await (await client.get("/metrics")).text()
        for name in (
            "eup_sink_lag_seconds",
            "eup_sink_lag_entries",
            'eup_sink_errors_total{kind="postgres"} 0.0',
            'eup_sink_errors_total{kind="redis"} 0.0',
            "eup_sink_dead_letters_total 0.0",
        ):
            assert name in text
    finally:
        await client.close()


async def test_the_sink_waits_for_a_database_that_is_not_up_yet() -> None:
    """Started before PostgreSQL: it waits (counted) instead of dying; --once fails at once."""
    pg = PostgresServer()
    metrics = SinkMetrics()
    waiting = asyncio.create_task(connect_ledger(pg.url, False, metrics))
    await wait_for(lambda: value(metrics, "eup_sink_errors_total", kind="postgres") >= 1)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(Exception, match="unavailable"):
        await connect_ledger(pg.url, True, metrics)


async def test_a_redis_that_came_back_with_less_has_its_counters_rebuilt(
    proxy_factory: ProxyFactory, db: LedgerDB
) -> None:
    """Redis restarts with what it persisted a while ago (here: a snapshot taken before the
    last requests): its counters have rolled back while PostgreSQL holds every charge. The
    running sink sees the restart, counts it, and rebuilds the org's counters from the
    ledger, so that admission — strict included — counts every charge again."""
    redis = RedisServer().start()
    try:
        proxy = await proxy_factory(redis={"url": redis.url})
        org = await traffic(proxy)
        await proxy.store.client.save()  # what the restarted Redis will have
        key = await proxy.member(org, "ben")
        for _ in range(4):
            assert (await proxy.post(key, message()))[0] == 200
        await proxy.settled()
        metrics = SinkMetrics()
        sink = LedgerSink(proxy.store, db, consumer="restart", claim_idle_ms=0, metrics=metrics)
        await sink.run(once=True)  # every charge is in PostgreSQL now
        before = await proxy.store.member_fields(org, "ben", ("inc",))
        assert int(before["inc"]) > 0
        redis.kill()
        redis.start()  # back with the snapshot: ben's charges are gone from Redis
        await proxy.store.client.ping()
        assert (await proxy.store.member_fields(org, "ben", ("inc",))).get("inc") is None
        await sink.run(once=True)
        assert value(metrics, "eup_sink_redis_restarts_total") == 1
        assert value(metrics, "eup_sink_counter_repairs_total") >= 1
        after = await proxy.store.member_fields(org, "ben", ("inc",))
        assert after["inc"] == before["inc"]  # rebuilt from the ledger
    finally:
        redis.cleanup()
