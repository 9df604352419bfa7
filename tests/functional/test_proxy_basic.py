from __future__ import annotations

import orjson

from tests.conftest import UPSTREAM_KEY, Proxy, message


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
