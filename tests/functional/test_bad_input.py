from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from proxy.core.credentials import PROXY_KEY_PREFIX, new_secret
from tests.conftest import Proxy, make_config, message


async def raw_post(
    proxy: Proxy, data: bytes, headers: dict[str, str], path: str = "/v1/messages"
) -> tuple[int, dict[str, Any]]:
    async with proxy.session.post(proxy.url + path, data=data, headers=headers) as r:
        return r.status, orjson.loads(await r.read())


async def nothing_charged(proxy: Proxy, org: str) -> None:
    assert await proxy.store.operations(org) == {}
    assert await proxy.store.ledger(org) == []


def envelope(doc: dict[str, Any], kind: str) -> str:
    assert doc["type"] == "error"
    assert doc["error"]["type"] == kind
    assert "request_id" in doc
    message: str = doc["error"]["message"]
    return message


async def test_authentication_failures(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "ann")
    body = orjson.dumps(message())
    status, doc = await raw_post(proxy, body, {})
    assert status == 401
    assert "missing API key" in envelope(doc, "authentication_error")
    status, doc = await raw_post(proxy, body, {"x-api-key": "sk-ant-api03-something"})
    assert status == 401
    assert "not a key issued by this proxy" in envelope(doc, "authentication_error")
    status, doc = await raw_post(proxy, body, {"x-api-key": new_secret(PROXY_KEY_PREFIX, org)})
    assert status == 401
    assert "unknown or revoked" in envelope(doc, "authentication_error")
    status, doc = await raw_post(
        proxy, body, {"x-api-key": new_secret(PROXY_KEY_PREFIX, "no-such-org")}
    )
    assert status == 401
    # revoked: the key worked, then it does not
    status, doc = await raw_post(proxy, body, {"authorization": f"Bearer {key}"})
    assert status == 200
    status, issued = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/ann/keys")
    status, _ = await proxy.admin(
        "DELETE", f"/admin/v1/orgs/{org}/members/ann/keys/{issued['key_id']}"
    )
    assert status == 200
    status, doc = await raw_post(proxy, body, {"x-api-key": issued["key"]})
    assert status == 401
    assert len(await proxy.store.ledger(org)) == 1


async def test_disabled_member_is_403(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "ben")
    status, _ = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{org}/members/ben",
        json={"role": "member", "tier": "standard", "enabled": False},
    )
    assert status == 200
    status, doc = await raw_post(proxy, orjson.dumps(message()), {"x-api-key": key})
    assert status == 403
    assert "disabled" in envelope(doc, "permission_error")
    async with proxy.session.post(
        proxy.url + "/v1/messages/count_tokens", json=message(), headers={"x-api-key": key}
    ) as r:
        assert r.status == 403
    await nothing_charged(proxy, org)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (orjson.dumps({"max_tokens": 10, "messages": []}), "model: field required"),
        (orjson.dumps({"model": "", "max_tokens": 10}), "model: field required"),
        (orjson.dumps({"model": "claude-sonnet-4-5"}), "max_tokens: field required"),
        (
            orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": "10"}),
            "max_tokens: must be an integer",
        ),
        (
            orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": True}),
            "max_tokens: must be an integer",
        ),
        (
            orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 0}),
            "max_tokens: must be between 1",
        ),
        (
            orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "stream": "yes"}),
            "stream: must be true or false",
        ),
    ],
)
async def test_bad_bodies_are_400_and_charge_nothing(
    proxy: Proxy, body: bytes, needle: str
) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "cy")
    status, doc = await raw_post(
        proxy, body, {"x-api-key": key, "content-type": "application/json"}
    )
    assert status == 400
    assert needle in envelope(doc, "invalid_request_error")
    assert proxy.mock.requests == []
    await nothing_charged(proxy, org)


async def test_body_over_the_limit_is_413(
    aiohttp_server: Any, redis_server: Any, upstream: Any
) -> None:
    from proxy.http.app import build_app
    from tests.conftest import Proxy as P

    up_server, mock = upstream
    config = make_config(
        redis_server.url, str(up_server.make_url("")).rstrip("/"), server={"max_body_bytes": 2048}
    )
    server = await aiohttp_server(build_app(config))
    async with aiohttp.ClientSession() as session:
        proxy = P(server, mock, up_server, session, config)
        org = await proxy.org("team")
        key = await proxy.member(org, "dee")
        big = orjson.dumps(message(text="x" * 5000))
        status, doc = await raw_post(proxy, big, {"x-api-key": key})
        assert status == 413
        assert "limit is 2048 bytes" in envelope(doc, "request_too_large")

        async def chunks() -> Any:
            for i in range(0, len(big), 500):
                yield big[i : i + 500]

        async with session.post(
            proxy.url + "/v1/messages", data=chunks(), headers={"x-api-key": key}
        ) as r:
            assert r.status == 413
            envelope(await r.json(), "request_too_large")
        await nothing_charged(proxy, org)


async def test_unmetered_inference_paths_are_refused(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "eda")
    for path in ("/v1/messages/batches", "/v1/complete"):
        status, doc = await raw_post(proxy, orjson.dumps(message()), {"x-api-key": key}, path)
        assert status == 400
        assert "without metering" in envelope(doc, "invalid_request_error")
    assert proxy.mock.requests == []


async def test_count_tokens_and_models_are_never_blocked_nor_metered(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "fin")
    await proxy.post(key, message(max_tokens=300_000), headers={"x-mock-output-tokens": "300000"})
    assert (await proxy.post(key, message()))[0] == 429  # seat limit reached
    status, _, body = await proxy.post(key, message(), path="/v1/messages/count_tokens")
    assert status == 200
    assert orjson.loads(body)["input_tokens"] > 0
    async with proxy.session.get(proxy.url + "/v1/models", headers={"x-api-key": key}) as r:
        assert r.status == 200
        assert (await r.json())["data"]
    async with proxy.session.head(proxy.url + "/") as r:
        assert r.status == 200
    assert len(await proxy.store.ledger(org)) == 1
