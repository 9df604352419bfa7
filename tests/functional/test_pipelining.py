"""Auto-pipelining: concurrent script calls share writes, and each gets its own reply."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
import redis

from proxy.core.errors import StoreUnavailable
from proxy.storage.store import Store, StoreRefusal, make_client
from proxy.tools.embedded import free_port
from tests.conftest import Proxy, make_config
from tests.servers import RedisServer


async def test_each_concurrent_call_gets_its_own_reply_in_few_round_trips(proxy: Proxy) -> None:
    store = proxy.store
    assert store.pipeliner is not None
    org = await proxy.org("team")
    await proxy.member(org, "pia")
    info = await store.client.info("stats")
    before = int(info["total_net_input_bytes"]), int(info["total_commands_processed"])
    writes = store.pipeliner.writes
    rids = [f"pipe-{i}" for i in range(100)]
    replies = await asyncio.gather(
        *(
            store.admit(org, rid, who="m", credential="pia", max_cost=10, est_cost=10)
            for rid in rids
        )
    )
    assert [a["rid"] for a in replies] == rids  # every caller got its own answer
    assert store.pipeliner.writes - writes < 10  # a hundred calls, a handful of writes
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


async def test_a_call_on_an_idle_connection_goes_out_at_once_and_busy_ones_batch(
    proxy: Proxy,
) -> None:
    """Nothing in flight: the call is written before ``call`` returns (no loop turn of
    waiting), and its ``sent`` is already True. While one is in flight, the calls of a turn
    share one write."""
    store = proxy.store
    pipe = store.pipeliner
    assert pipe is not None
    org = await proxy.org("team")
    await proxy.member(org, "ida")
    await store.admit(org, "idle-0", who="m", credential="ida", max_cost=1, est_cost=1)
    assert not pipe.pending
    writes = pipe.writes
    reply, sent = store.settle(org, "idle-0", cost=7, model="m", usage={})
    assert pipe.writes == writes + 1 and not pipe.queue  # written synchronously
    assert isinstance(sent, asyncio.Future) and sent.done() and sent.result() is True
    # in flight now: the next calls of this turn wait for one shared write
    more = [
        store.admit(org, f"idle-{i}", who="m", credential="ida", max_cost=1, est_cost=1)
        for i in range(1, 6)
    ]
    tasks = [asyncio.ensure_future(c) for c in more]
    await asyncio.sleep(0)  # the tasks queue their calls
    assert pipe.writes == writes + 1 and len(pipe.queue) == 5
    assert (await reply)["cost"] == "7"
    assert [a["rid"] for a in await asyncio.gather(*tasks)] == [f"idle-{i}" for i in range(1, 6)]
    assert pipe.writes == writes + 2


def _store(url: str, timeout: float = 5.0) -> Store:
    cfg = make_config(url, "http://127.0.0.1:9")
    cfg = dataclasses.replace(cfg, redis=dataclasses.replace(cfg.redis, socket_timeout_s=timeout))
    return Store(
        make_client(cfg.redis),
        prefix="eup",
        tiers=cfg.tiers,
        policy=cfg.policy,
        pipelining=True,
    )


async def _close(store: Store) -> None:
    assert store.pipeliner is not None
    await store.pipeliner.close()
    await store.client.aclose()


async def test_scripts_run_over_a_unix_socket(tmp_path: Path) -> None:
    """REDIS_URL=unix://…: Redis on the proxy's host, reached on its socket, auto-pipelined
    as over TCP."""
    sock = tmp_path / "redis.sock"
    server = RedisServer("--unixsocket", str(sock), "--unixsocketperm", "700").start()
    try:  # start() returns once Redis answers, its socket listening since its start
        store = _store(f"unix://{sock}")
        try:
            assert store.pipeliner is not None and store.pipeliner.path == str(sock)
            k = store.keys("sockorg")
            await store.client.hset(k.org, mapping={"plan": "team", "name": "sockorg"})
            await store.client.hset(k.members, mapping={"uma|tier": "standard", "uma|role": "m"})
            adms = await asyncio.gather(
                *(
                    store.admit(
                        "sockorg", f"s-{i}", who="m", credential="uma", max_cost=1, est_cost=1
                    )
                    for i in range(20)
                )
            )
            assert all(a.allowed for a in adms)
            reply, sent = store.settle("sockorg", "s-0", cost=123, model="m", usage={})
            assert await sent
            assert (await reply)["cost"] == "123"
            clients = await store.client.client_list()
            # the pipeliner's connection and the pool's, both on the socket (flag U)
            assert len(clients) >= 2 and all("U" in c["flags"] for c in clients), clients
        finally:
            await _close(store)
    finally:
        server.cleanup()


async def test_calls_survive_a_killed_connection(redis_server: RedisServer) -> None:
    store = _store(redis_server.url)
    try:
        # a call answered on the first connection, then that connection is killed by Redis
        with pytest.raises(StoreRefusal):
            await store.release("pipe-kill", "r1")
        admin = redis.Redis(port=redis_server.port)
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        admin.close()
        # the next calls go out on a fresh connection, each with its own answer
        got = await asyncio.gather(
            *(store.release("pipe-kill", f"r{i}") for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(g, StoreRefusal) and g.code == "unknown_reservation" for g in got)
    finally:
        await _close(store)


async def test_a_silent_redis_fails_the_calls_after_retries(redis_server: RedisServer) -> None:
    store = _store(redis_server.url, timeout=0.2)
    admin = redis.Redis(port=redis_server.port)
    try:
        with pytest.raises(StoreRefusal):
            await store.release("pipe-pause", "r1")  # connected
        # (UNPAUSE in finally is itself held until the pause ends: keep it short)
        admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="Timeout"):
            await store.release("pipe-pause", "r2")
        # three sends of 0.2 s each, then it gives up: it does not wait for the pause to end
        assert 0.55 < time.monotonic() - started < 2.9
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        await _close(store)
    # and once Redis answers again, a new store works at once
    store = _store(redis_server.url)
    try:
        with pytest.raises(StoreRefusal):
            await store.release("pipe-pause", "r3")
    finally:
        await _close(store)


async def test_no_redis_fails_fast_with_store_unavailable() -> None:
    store = _store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable, match=r"unavailable \(ConnectionError\)"):
            await store.release("pipe-none", "r1")
    finally:
        await _close(store)


async def test_password_and_database_from_the_url() -> None:
    server = RedisServer().start()
    with redis.Redis(port=server.port) as setup:
        setup.config_set("requirepass", "s3cret")
    try:
        store = _store(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        try:
            with pytest.raises(StoreRefusal):
                await store.release("pipe-auth", "r1")
            admin = redis.Redis(port=server.port, password="s3cret", db=3)
            admin.hset(store.keys("pipe-auth").org, "plan", "team")
            admin.close()
            # the script saw database 3: the org exists there
            with pytest.raises(StoreRefusal) as info:
                await store.release("pipe-auth", "r2")
            assert info.value.code == "unknown_reservation"
        finally:
            await _close(store)
        bad = _store(f"redis://:wrong@127.0.0.1:{server.port}/0")
        try:
            with pytest.raises(StoreUnavailable):
                await bad.release("pipe-auth", "r1")
        finally:
            await _close(bad)
    finally:
        server.cleanup()


async def test_flushed_scripts_are_loaded_again(redis_server: RedisServer) -> None:
    store = _store(redis_server.url)
    try:
        await store.client.script_flush()
        with pytest.raises(StoreRefusal):
            await store.release("pipe-flush", "r1")
    finally:
        await _close(store)


async def test_an_admission_after_a_written_settlement_sees_it_on_another_connection(
    proxy: Proxy, redis_server: RedisServer
) -> None:
    """What lets the answer go before the settlement's reply: once the settlement is written,
    an admission sent afterwards — here by another store on a connection of its own, as
    another worker would — is run after it by Redis."""
    org = await proxy.org("team")
    await proxy.member(org, "ola")
    first, other = _store(redis_server.url), _store(redis_server.url)
    try:
        used = 0
        for i in range(200):
            rid = f"order-{i}"
            adm = await first.admit(org, rid, who="m", credential="ola", max_cost=1, est_cost=1)
            assert adm.allowed
            assert first.pipeliner is not None
            writes = first.pipeliner.writes
            reply, sent = first.settle(org, rid, cost=1000, model="m", usage={})
            assert await sent
            # True means on the wire: the batch holding the settlement has been written
            assert first.pipeliner.writes == writes + 1 and not first.pipeliner.queue
            seen = await other.admit(
                org, f"look-{i}", who="m", credential="ola", max_cost=1, est_cost=1, reserve=False
            )
            used += 1000
            assert int(seen["s_used"]) == used, i
            await reply
    finally:
        await _close(first)
        await _close(other)


async def test_a_settlement_queued_while_the_connection_is_down_says_so(
    proxy: Proxy, redis_server: RedisServer
) -> None:
    """Not written at once (the connection is being replaced): the proxy then waits for the
    settlement's reply before the member sees the end of the answer — and the reply comes."""
    org = await proxy.org("team")
    await proxy.member(org, "kai")
    store = _store(redis_server.url)
    try:
        adm = await store.admit(org, "down-1", who="m", credential="kai", max_cost=1, est_cost=1)
        assert adm.allowed
        with redis.Redis(port=redis_server.port) as admin:
            assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        for _ in range(100):  # until the loss is noticed
            if store.pipeliner is not None and store.pipeliner.proto is None:
                break
            await asyncio.sleep(0.01)
        reply, sent = store.settle(org, "down-1", cost=5, model="m", usage={})
        assert await sent is False
        assert (await reply)["cost"] == "5"
    finally:
        await _close(store)
