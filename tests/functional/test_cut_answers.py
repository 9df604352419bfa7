"""Answers cut after the API's 200, by the API or by the member: the upstream request is
closed at once, and the charge is what the mock says it served — the API's reported usage,
completed by the estimate rule (input from the request, output from the text that came),
marked estimated in the ledger and the usage view. Nothing received, nothing charged."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson

from proxy.core.pricing import usage_from_mapping
from proxy.core.usage import tokens_of_chars
from proxy.storage.model import Op
from tests.conftest import OPERATOR, Proxy, message
from tests.functional.helpers import eventually, member_counters


def served_cost(proxy: Proxy, record: dict[str, Any]) -> int:
    served = record["served"]
    assert served is not None
    return proxy.config.prices.cost(record["body"]["model"], usage_from_mapping(served))


def as_sent(key: str, body: dict[str, Any], **mock: str) -> tuple[bytes, dict[str, str]]:
    """The request's bytes and headers: the mock reports ~4 bytes of it a token, the estimate
    rule's own count, so that an estimate of a cut answer is exact; ``mock``: x-mock-*
    headers (``output_tokens="400"`` is ``x-mock-output-tokens: 400``)."""
    raw = orjson.dumps(body)
    headers = {
        "x-api-key": key,
        "content-type": "application/json",
        "x-mock-input-tokens": str(tokens_of_chars(len(raw))),
        **{"x-mock-" + k.replace("_", "-"): v for k, v in mock.items()},
    }
    return raw, headers


async def leave_after(url: str, seconds: float, headers: dict[str, str], **body: Any) -> None:
    """A member who sends a request and goes away after ``seconds`` (Esc in Claude Code)."""
    async with aiohttp.ClientSession() as client:

        async def ask() -> None:
            async with client.post(url + "/v1/messages", headers=headers, **body) as r:
                while await r.content.readany():
                    pass

        task = asyncio.ensure_future(ask())
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ledger_rows(proxy: Proxy, org: str, n: int = 1) -> list[dict[str, str]]:
    async def there() -> bool:
        return len(await proxy.store.ledger(org)) >= n

    await eventually(there)
    await proxy.settled()
    return await proxy.store.ledger(org)


async def test_a_json_answer_cut_by_the_api_is_charged_its_estimate_marked_estimated(
    proxy: Proxy,
) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "ann")
    raw, headers = as_sent(key, message(max_tokens=1000), fault="drop", output_tokens="400")
    async with proxy.session.post(proxy.url + "/v1/messages", data=raw, headers=headers) as r:
        assert r.status == 502
        doc = await r.json()
    assert doc["error"]["message"] == "the Anthropic API response was cut short"
    rows = await ledger_rows(proxy, org)
    record = proxy.mock.requests[-1]
    assert record["completed"] is False
    assert len(rows) == 1 and rows[0]["estimated"] == "1"
    assert int(rows[0]["cost"]) == served_cost(proxy, record) > 0
    status, usage = await proxy.admin("GET", f"/admin/v1/orgs/{org}/usage", OPERATOR)
    assert status == 200
    ann = usage["members"][0]
    assert ann["estimated_usage"] == ann["included_usage"] == usage["totals"]["estimated_usage"]
    assert (await member_counters(proxy.store, org, "ann"))["eu_res"] == 0


async def test_a_member_gone_while_a_json_answer_arrives_closes_it_and_pays_what_came(
    proxy: Proxy,
) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "bo")
    raw, headers = as_sent(
        key, message(max_tokens=2000), delay_ms="150", events="20", output_tokens="1000"
    )
    # the member goes away (Esc) while the answer is on its way
    await leave_after(proxy.url, 0.5, headers, data=raw)
    rows = await ledger_rows(proxy, org)
    record = proxy.mock.requests[-1]

    async def cut() -> bool:
        return record.get("disconnected") is True

    await eventually(cut)  # the proxy closed the upstream request
    assert record["completed"] is False
    assert rows[0]["estimated"] == "1"
    assert int(rows[0]["cost"]) == served_cost(proxy, record) > 0


async def test_a_member_gone_before_the_first_byte_closes_the_request_and_charges_nothing(
    proxy: Proxy,
) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "cy")
    headers = {"x-api-key": key, "x-mock-first-byte-ms": "5000"}
    loop = asyncio.get_running_loop()
    await leave_after(proxy.url, 0.3, headers, json=message(stream=True))
    gone = loop.time()
    record = proxy.mock.requests[-1]

    async def cut() -> bool:
        return record.get("disconnected") is True

    await eventually(cut)
    assert loop.time() - gone < 2.0  # at once, not after the API's first byte (5 s)
    await proxy.settled()
    assert await proxy.store.ledger(org) == []
    ops = await proxy.store.operations(org)
    assert [op["s"] for op in ops.values()] == [Op.RELEASED]


async def test_a_stream_whose_member_left_after_message_start_pays_the_input_reported(
    proxy: Proxy,
) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "di")
    headers = {
        "x-api-key": key,
        "x-mock-delay-ms": "3000",
        "x-mock-input-tokens": "5000",
        "x-mock-output-tokens": "100",
    }
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/v1/messages", json=message(stream=True), headers=headers) as r,
    ):
        got = b""
        while b"event: ping" not in got:
            got += await r.content.readany()
        r.close()
    rows = await ledger_rows(proxy, org)
    record = proxy.mock.requests[-1]
    assert rows[0]["estimated"] == "1"
    assert int(rows[0]["cost"]) == served_cost(proxy, record) == 5000 * 3000 + 15000


async def test_an_upstream_500_charges_nothing_and_is_forwarded(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "ed")
    status, _, body = await proxy.post(key, message(), headers={"x-mock-fault": "status-500"})
    assert status == 500
    assert orjson.loads(body)["error"]["type"] == "api_error"
    await proxy.settled()
    assert await proxy.store.ledger(org) == []


async def test_a_cut_answer_is_never_charged_more_output_than_max_tokens(proxy: Proxy) -> None:
    """The API cuts a JSON answer whose text, at ~4 characters a token, would count more
    than the request's max_tokens: the charge's output is max_tokens, marked estimated."""
    org = await proxy.org("team")
    key = await proxy.member(org, "cap")
    # the mock writes ~4 characters a token of output_tokens: 4,000 tokens' worth of text
    raw, headers = as_sent(key, message(max_tokens=300), fault="drop", output_tokens="4000")
    async with proxy.session.post(proxy.url + "/v1/messages", data=raw, headers=headers) as r:
        assert r.status == 502
    rows = await ledger_rows(proxy, org)
    assert len(rows) == 1 and rows[0]["estimated"] == "1"
    assert orjson.loads(rows[0]["usage"])["output_tokens"] == 300
