"""Redis outages against a real redis-server that the tests kill and restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from proxy.core.credentials import hash_secret
from proxy.core.pricing import Usage
from proxy.http.appkeys import METER
from proxy.tools.embedded import RedisServer
from tests.conftest import ProxyFactory, message
from tests.functional.helpers import eventually, ledger_sum, member_counters

AOF = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A redis-server with AOF, so that a restart keeps what was written before the kill."""
    server = RedisServer(*AOF).start()
    yield server
    server.cleanup()


def restart(server: RedisServer) -> RedisServer:
    again = RedisServer(*AOF, port=server.port, directory=server.dir)
    return again.start()


async def test_fail_closed_is_a_clear_503_and_reaches_nothing(
    proxy_factory: ProxyFactory, durable_redis: RedisServer
) -> None:
    proxy = await proxy_factory(redis={"url": durable_redis.url, "socket_timeout_s": 1})
    org = await proxy.org("team")
    key = await proxy.member(org, "ann")
    assert (await proxy.post(key, message()))[0] == 200
    durable_redis.kill()
    calls = len(proxy.mock.requests)
    status, _, body = await proxy.post(key, message())
    assert status == 503
    doc = orjson.loads(body)
    assert doc["error"]["type"] == "api_error"
    assert "fails closed" in doc["error"]["message"]
    assert len(proxy.mock.requests) == calls
    async with proxy.session.get(proxy.url + "/readyz") as r:
        assert r.status == 503
    async with proxy.session.get(proxy.url + "/metrics") as r:
        assert 'eup_redis_errors_total{script="admit"}' in await r.text()


@pytest.mark.parametrize(
    "name",
    [
        "journal-99999.jsonl",  # an earlier version's file, one per pid (no lock)
        "journal-99999.jsonl.99998.replaying",  # one it was replaying when it stopped
    ],
)
async def test_a_journal_an_earlier_version_left_is_replayed(
    proxy_factory: ProxyFactory, tmp_path: Path, name: str
) -> None:
    proxy = await proxy_factory(policy={"journal_dir": str(tmp_path)})
    org = await proxy.org("team")
    key = await proxy.member(org, "old")
    usage = Usage(input_tokens=10, output_tokens=20).as_dict()
    entry = {
        "rid": "legacy-1",
        "org": org,
        "key": hash_secret(key),
        "model": "claude-sonnet-4-5",
        "usage": usage,
    }
    legacy = tmp_path / name
    legacy.write_bytes(orjson.dumps(entry) + b"\n")

    async def replayed() -> bool:
        return not legacy.exists() and len(await proxy.store.ledger(org)) == 1

    await eventually(replayed, within=5)
    (row,) = await proxy.store.ledger(org)
    assert (row["op"], int(row["cost"]), row["source"]) == (
        "legacy-1",
        10 * 3000 + 20 * 15000,
        "journal",
    )


async def test_fail_open_journals_under_load_and_replays_exactly_once(
    proxy_factory: ProxyFactory, durable_redis: RedisServer, tmp_path: Path
) -> None:
    proxy = await proxy_factory(
        redis={"url": durable_redis.url, "socket_timeout_s": 1},
        policy={"fail_mode": "open", "journal_dir": str(tmp_path)},
    )
    org = await proxy.org("team")
    keys = [await proxy.member(org, f"m{i}", tier="premium") for i in range(3)]
    results: list[int] = []
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            body = message(text="x" * (i % 50), stream=(i + worker) % 2 == 0)
            status, _, _ = await proxy.post(keys[worker % 3], body)
            results.append(status)
            i += 1

    workers = [asyncio.create_task(load(w)) for w in range(6)]
    await asyncio.sleep(0.3)
    durable_redis.kill()  # mid-load: admissions and settlements in flight fail over
    await asyncio.sleep(0.5)
    # count_tokens is never blocked, Redis or not
    status, _, _ = await proxy.post(keys[0], message(), path="/v1/messages/count_tokens")
    assert status == 200
    assert list(tmp_path.glob("*.jsonl"))  # usage is being journaled meanwhile
    server = restart(durable_redis)
    try:
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
        assert set(results) == {200}  # nobody was refused

        journal = proxy.server.app[METER].journal  # type: ignore[union-attr]

        async def replayed() -> bool:
            # left: this process's own file (its requests in flight), with nothing to replay
            return (
                list(tmp_path.iterdir()) == [journal.path]
                and not journal.to_replay
                and len(await proxy.store.ledger(org)) == len(results)
            )

        await eventually(replayed, within=15)
        # every request charged exactly once; counters = ledger
        rows = await proxy.store.ledger(org)
        assert len({r["op"] for r in rows}) == len(rows) == len(results)
        assert any(r["source"] == "journal" for r in rows)
        total = 0
        for m in ("m0", "m1", "m2"):
            counters = await member_counters(proxy.store, org, m)
            assert counters["inc"] == await ledger_sum(proxy.store, org, member=m)
            total += counters["inc"]
        assert total == await ledger_sum(proxy.store, org)
        await proxy.settled()
        async with proxy.session.get(proxy.url + "/metrics") as r:
            text = await r.text()
        assert "eup_fail_open_requests_total" in text
        assert 'eup_journal_entries_total{outcome="replayed"}' in text
    finally:
        server.cleanup()
