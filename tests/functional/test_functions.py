"""The scripts on a Redis without functions (before 7.0), simulated on a real redis-server
with FCALL and FUNCTION renamed away: the library turns to EVALSHA by itself — at start
(FUNCTION LOAD unknown) or at the first call (FCALL unknown) — and nothing else changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from proxy.config import PolicyConfig
from proxy.http.app import build_app
from proxy.storage.store import Store, StoreRefusal
from proxy.tools.mock_upstream import MockUpstream
from tests.conftest import Proxy, ProxyTestServer, make_config, message
from tests.functional.helpers import ledger_sum, member_counters
from tests.servers import RedisServer

NO_FUNCTIONS = ("--rename-command", "FCALL", "", "--rename-command", "FUNCTION", "")


@pytest.fixture(scope="module")
def old_redis() -> Iterator[RedisServer]:
    server = RedisServer(*NO_FUNCTIONS).start()
    yield server
    server.cleanup()


@pytest.fixture
async def proxy(
    old_redis: RedisServer, upstream: tuple[TestServer, MockUpstream]
) -> AsyncIterator[Proxy]:
    up_server, mock = upstream
    config = make_config(old_redis.url, str(up_server.make_url("")).rstrip("/"))
    server = ProxyTestServer(build_app(config, redis_client=None))
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Proxy(server, mock, up_server, session, config)
    finally:
        await session.close()
        await server.close()


async def test_a_redis_without_functions_runs_the_scripts_with_evalsha(proxy: Proxy) -> None:
    store = proxy.store
    assert not store.library.functions  # FUNCTION LOAD was an unknown command at start
    org = await proxy.org("team")
    key = await proxy.member(org, "ned")
    for stream in (False, True):
        status, _, body = await proxy.post(key, message(stream=stream))
        assert status == 200, body
    await proxy.settled()
    assert len(await store.ledger(org)) == 2
    counters = await member_counters(store, org, "ned")
    assert counters["inc"] == await ledger_sum(store, org)
    stats: dict[str, Any] = await store.client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] >= 4 and "cmdstat_fcall" not in stats


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_first_call_that_meets_no_fcall_turns_the_library_to_evalsha(
    old_redis: RedisServer, pipelining: bool
) -> None:
    """Without the load at start (a tool, a store whose first load failed), the first call's
    FCALL is an unknown command: it is made again with EVALSHA, and so is every call after."""
    client = aioredis.Redis.from_url(old_redis.url)
    store = Store(client, prefix="eup", tiers={}, policy=PolicyConfig(), pipelining=pipelining)
    assert store.library.functions and (store.pipeliner is not None) is pipelining
    try:
        for _ in range(2):
            with pytest.raises(StoreRefusal, match="unknown_org"):
                await store.whois("nobody", "k", "0" * 64)
            assert not store.library.functions
            assert store.scripts["whois"].head == ("EVALSHA", store.scripts["whois"].sha)
    finally:
        await store.close()
        await client.aclose()
