from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.http.appkeys import METRICS
from proxy.storage.model import Op
from tests.conftest import Proxy, message
from tests.functional.helpers import eventually, member_counters


async def ops_record(proxy: Proxy, org: str) -> dict[str, str]:
    ops = await proxy.store.operations(org)
    assert len(ops) == 1
    return next(iter(ops.values()))


async def test_upstream_error_before_any_byte_is_forwarded_and_charges_nothing(
    proxy: Proxy,
) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "ann")
    status, _, body = await proxy.post(
        key, message(stream=True), headers={"x-mock-fault": "status-529"}
    )
    assert status == 529
    doc = orjson.loads(body)
    assert doc["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert doc["request_id"].startswith("req_mock_")
    assert await proxy.store.ledger(org) == []
    assert (await ops_record(proxy, org))["s"] == Op.RELEASED
    assert (await member_counters(proxy.store, org, "ann"))["s_used"] == 0


async def test_unreachable_upstream_is_a_502_and_releases(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "abe")
    await proxy.mock_server_close()
    status, _, body = await proxy.post(key, message())
    assert status == 502
    assert orjson.loads(body)["error"]["type"] == "api_error"
    assert (await ops_record(proxy, org))["s"] == Op.RELEASED


async def test_error_event_mid_stream_settles_the_usage_so_far(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "bob")
    status, _, body = await proxy.post(
        key,
        message(stream=True, max_tokens=1000),
        headers={
            "x-mock-fault": "error-event",
            "x-mock-output-tokens": "400",
            "x-mock-input-tokens": "1000",
            "x-mock-events": "10",
        },
    )
    assert status == 200
    assert b"event: error" in body
    rows = await proxy.store.ledger(org)
    assert len(rows) == 1
    # input from message_start; output estimated from the 5 of 10 text deltas that came
    assert int(rows[0]["cost"]) == 1000 * 3000 + 200 * 15000


async def test_dropped_stream_settles_the_usage_so_far(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "cat")
    headers = {
        "x-api-key": key,
        "x-mock-fault": "drop",
        "x-mock-output-tokens": "400",
        "x-mock-input-tokens": "1000",
    }
    async with proxy.session.post(
        proxy.url + "/v1/messages", headers=headers, json=message(stream=True, max_tokens=1000)
    ) as resp:
        assert resp.status == 200
        # the upstream cut the stream: the member's stream is cut too, as the API would
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    rows = await proxy.store.ledger(org)
    assert len(rows) == 1
    assert int(rows[0]["cost"]) == 1000 * 3000 + 200 * 15000


async def test_stream_without_message_delta_estimates_output(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "dot")
    await proxy.post(
        key,
        message(stream=True, max_tokens=1000),
        headers={
            "x-mock-fault": "no-delta",
            "x-mock-output-tokens": "400",
            "x-mock-input-tokens": "10",
        },
    )
    rows = await proxy.store.ledger(org)
    assert int(rows[0]["cost"]) == 10 * 3000 + 400 * 15000


async def test_client_disconnect_cancels_upstream_and_settles(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "eli")
    headers = {
        "x-api-key": key,
        "x-mock-delay-ms": "50",
        "x-mock-events": "100",
        "x-mock-output-tokens": "1000",
        "x-mock-input-tokens": "100",
    }
    async with aiohttp.ClientSession() as client:
        resp = await client.post(
            proxy.url + "/v1/messages", json=message(stream=True, max_tokens=2000), headers=headers
        )
        got = b""
        while got.count(b"event: content_block_delta") < 3:
            got += await resp.content.readany()
        resp.close()  # the member goes away mid-stream

    async def settled() -> bool:
        return len(await proxy.store.ledger(org)) == 1

    await eventually(settled)
    record = proxy.mock.requests[-1]

    async def cancelled() -> bool:
        return record.get("disconnected") is True

    await eventually(cancelled)
    assert record["completed"] is False
    row = (await proxy.store.ledger(org))[0]
    cost = int(row["cost"])
    # input plus the text streamed before the disconnect, not the full 1000 tokens
    assert 100 * 3000 + 30 * 15000 <= cost < 100 * 3000 + 1000 * 15000
    await asyncio.sleep(0.2)
    assert len(await proxy.store.ledger(org)) == 1


async def test_a_settlement_whose_reservation_redis_lost_is_charged_all_the_same(
    proxy: Proxy,
) -> None:
    """Redis comes back without a request's reservation while it streams (the last second
    of an AOF everysec lost): its settlement is refused as unknown, and the proxy charges it
    all the same — once, on what the API reported, counted."""
    org = await proxy.org("team")
    key = await proxy.member(org, "rae")
    body = message(stream=True)
    slow = {"x-mock-events": "6", "x-mock-delay-ms": "100", "x-mock-output-tokens": "60"}
    task = asyncio.create_task(proxy.post(key, body, headers=slow))
    ops: dict[str, Any] = {}
    for _ in range(50):
        await asyncio.sleep(0.02)
        ops = await proxy.store.operations(org)
        if ops:
            break
    (rid,) = ops
    k = proxy.store.keys(org)
    await proxy.store.client.delete(k.ops + rid)  # the reservation is gone from Redis
    status, _, _ = await task
    assert status == 200
    await proxy.settled()
    rows = [r for r in await proxy.store.ledger(org) if r["kind"] == "usage"]
    assert len(rows) == 1 and rows[0]["op"] == rid
    served = proxy.mock.requests[-1]
    assert orjson.loads(rows[0]["usage"])["output_tokens"] == 60 and served["completed"]
    metrics = proxy.server.app[METRICS].registry
    assert metrics.get_sample_value("eup_settle_failures_total", {"reason": "recharged"}) == 1
    # and charged once: a replay of the same settlement changes nothing
    await proxy.settled()
    assert len([r for r in await proxy.store.ledger(org) if r["kind"] == "usage"]) == 1
