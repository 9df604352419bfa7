from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp.test_utils import TestServer

from proxy.tools.mock_upstream import MockUpstream
from tests.conftest import UPSTREAM_KEY, Proxy, ProxyFactory, message


async def test_non_streaming_request_is_forwarded_and_metered(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "alice")
    status, headers, body = await proxy.post(
        key,
        message(),
        path="/v1/messages?beta=true",
        headers={"anthropic-beta": "x-1", "x-custom": "kept"},
    )
    assert status == 200, body
    doc = orjson.loads(body)
    assert doc["usage"]["output_tokens"] == 50
    seen = proxy.mock.requests[-1]
    assert seen["query"] == "beta=true"
    assert seen["headers"]["x-api-key"] == UPSTREAM_KEY
    assert seen["headers"]["anthropic-beta"] == "x-1"
    assert seen["headers"]["x-custom"] == "kept"
    assert "Authorization" not in seen["headers"]
    assert headers["anthropic-ratelimit-unified-status"] == "allowed"
    ledger = await proxy.store.ledger(org)
    assert len(ledger) == 1
    assert ledger[0]["mode"] == "included"


async def test_stream_is_forwarded(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "bob")
    status, headers, body = await proxy.post(key, message(stream=True))
    assert status == 200, body
    assert b"event: message_stop" in body
    assert headers["Content-Type"].startswith("text/event-stream")
    ledger = await proxy.store.ledger(org)
    assert len(ledger) == 1


async def test_usage_me(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "carol")
    await proxy.post(key, message())
    async with proxy.session.get(proxy.url + "/v1/usage/me", headers={"x-api-key": key}) as r:
        doc = await r.json()
    assert r.status == 200, doc
    assert doc["windows"]["five_hour"]["allowance"] == "4.00"
    assert doc["mode"] == "included"


async def test_a_cookie_the_api_sets_reaches_its_member_and_no_one_else(
    proxy_factory: ProxyFactory, upstream: tuple[TestServer, MockUpstream]
) -> None:
    # by host name, as the real API is: a cookie jar would keep cookies of a named host
    proxy = await proxy_factory(upstream={"url": f"http://localhost:{upstream[0].port}"})
    org = await proxy.org("team")
    ann, bob = await proxy.member(org, "ann"), await proxy.member(org, "bob")
    status, headers, _ = await proxy.post(
        ann, message(), headers={"x-mock-set-cookie": "__cf_bm=ann-only; Path=/"}
    )
    assert status == 200
    assert headers["set-cookie"].startswith("__cf_bm=ann-only")  # passed through to ann
    status, _, _ = await proxy.post(bob, message())
    assert status == 200
    # the proxy's one upstream session keeps no cookies: bob's request carries none
    assert "Cookie" not in proxy.mock.requests[-1]["headers"]


async def test_every_answer_names_the_proxys_request_id_and_the_line_both(
    proxy: Proxy, capfd: pytest.CaptureFixture[str]
) -> None:
    """A 200 carries the API's request-id and the proxy's x-request-id; a refusal the same
    id in its header and its envelope; the access line carries both ids."""
    org = await proxy.org("team")
    key = await proxy.member(org, "rid")
    status, headers, _ = await proxy.post(key, message())
    assert status == 200
    ours, theirs = headers["x-request-id"], headers["request-id"]
    assert ours.startswith("req_eup_") and theirs.startswith("req_mock_")
    status, headers, body = await proxy.post("sk-eup-nope-" + "0" * 32, message())
    assert status == 401 and headers["x-request-id"] == orjson.loads(body)["request_id"]
    await proxy.settled()
    await asyncio.sleep(0.3)  # the access log is flushed in batches
    lines = [orjson.loads(x) for x in capfd.readouterr().err.splitlines() if ours in x]
    assert any(line.get("upstream_request_id") == theirs for line in lines), lines
