from __future__ import annotations

import calendar
from typing import Any

import anthropic
import pytest
from aiohttp import web

from proxy.tools.mock_upstream import MockUpstream
from tests.conftest import SERVICE, Proxy, ProxyFactory, message
from tests.functional.drivers import OUT
from tests.functional.test_extra_usage import exhaust_seat, settings

AUTH = {"authorization": f"Bearer {SERVICE}"}


async def call(proxy: Proxy, path: str, body: Any, token: str = SERVICE) -> tuple[int, Any]:
    async with proxy.session.post(
        proxy.url + path, json=body, headers={"authorization": f"Bearer {token}"}
    ) as r:
        return r.status, await r.json()


def check_body(org: str, member: str, request_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "org_id": org,
        "member_id": member,
        "model": "claude-sonnet-4-5",
        "input_tokens": 100,
        "max_tokens": 1000,
        "request_id": request_id,
        **extra,
    }


async def test_check_settle_release_and_their_replays(proxy: Proxy) -> None:
    org = await proxy.org("team")
    await proxy.member(org, "ada")
    status, d = await call(proxy, "/v1/usage/check", check_body(org, "ada", "r1"))
    assert status == 200
    assert (d["decision"], d["mode"]) == ("allow", "included")
    assert d["utilization"]["five_hour"] == 0
    status, again = await call(proxy, "/v1/usage/check", check_body(org, "ada", "r1"))
    assert again["reservation_id"] == d["reservation_id"]  # replayed, not reserved twice
    usage = {
        "input_tokens": 100,
        "output_tokens": 500,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    status, s1 = await call(
        proxy, "/v1/usage/settle", {"reservation_id": d["reservation_id"], "usage": usage}
    )
    assert status == 200
    assert s1["cost"] == "0.0078"  # 100 * $3/M + 500 * $15/M
    assert s1["charged"]["included_usage"] == "0.0078"
    status, s2 = await call(
        proxy, "/v1/usage/settle", {"reservation_id": d["reservation_id"], "usage": usage}
    )
    assert (status, s2["replay"], s2["cost"]) == (200, True, "0.0078")
    assert len(await proxy.store.ledger(org)) == 1
    status, _ = await call(proxy, "/v1/usage/release", {"reservation_id": d["reservation_id"]})
    assert status == 409
    status, err = await call(proxy, "/v1/usage/check", check_body(org, "ada", "r1"))
    assert status == 409
    assert "already used" in err["error"]["message"]
    # release, twice
    _, d2 = await call(proxy, "/v1/usage/check", check_body(org, "ada", "r2"))
    status, r1 = await call(proxy, "/v1/usage/release", {"reservation_id": d2["reservation_id"]})
    assert (status, r1["released"], r1["replay"]) == (200, True, False)
    status, r2 = await call(proxy, "/v1/usage/release", {"reservation_id": d2["reservation_id"]})
    assert (status, r2["replay"]) == (200, True)
    status, _err = await call(
        proxy, "/v1/usage/settle", {"reservation_id": d2["reservation_id"], "usage": usage}
    )
    assert status == 409
    # a dry check reserves nothing
    _, d3 = await call(proxy, "/v1/usage/check", check_body(org, "ada", "r3", reserve=False))
    assert d3["reservation_id"] is None
    assert await proxy.store.operation(org, "chk:r3") is None
    # member status
    async with proxy.session.get(
        proxy.url + f"/v1/usage/orgs/{org}/members/ada", headers=AUTH
    ) as r:
        doc = await r.json()
    assert doc["windows"]["five_hour"]["used"] == "0.0078"


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/usage/check", {"org_id": "x"}, 400, "unknown field"),
        ("/v1/usage/check", {"member_id": "a"}, 400, "org_id: field required"),
        (
            "/v1/usage/settle",
            {"reservation_id": "nope", "usage": {}},
            404,
            "not a reservation this service issued",
        ),
        ("/v1/usage/settle", {"reservation_id": "rsv_e30", "usage": {}}, 404, "not a reservation"),
        ("/v1/usage/release", {}, 400, "reservation_id: field required"),
    ],
)
async def test_check_api_validates(
    proxy: Proxy, path: str, body: Any, status: int, needle: str
) -> None:
    if body == {"org_id": "x"}:
        body = {**check_body("x", "a", "r"), "colour": 1}
    got, doc = await call(proxy, path, body)
    assert got == status
    assert needle in doc["error"]["message"]


async def test_check_api_bad_values_change_nothing(proxy: Proxy) -> None:
    org = await proxy.org("team")
    await proxy.member(org, "bo")
    for bad, needle in [
        ({"max_tokens": 0}, "max_tokens: must be between"),
        ({"input_tokens": -1}, "input_tokens: must be between"),
        ({"input_tokens": "9"}, "input_tokens: must be an integer"),
        ({"request_id": "a b"}, "request_id"),
        ({"accept_extra_usage": "yes"}, "accept_extra_usage: must be true"),
    ]:
        status, doc = await call(proxy, "/v1/usage/check", {**check_body(org, "bo", "x"), **bad})
        assert status == 400, bad
        assert needle in doc["error"]["message"]
    status, doc = await call(proxy, "/v1/usage/check", check_body(org, "nobody", "x"))
    assert status == 404
    status, doc = await call(proxy, "/v1/usage/check", check_body("no-org", "bo", "x"))
    assert status == 404
    status, doc = await call(proxy, "/v1/usage/check", check_body(org, "bo", "x"), token="no")
    assert status == 401
    _, d = await call(proxy, "/v1/usage/check", check_body(org, "bo", "ok"))
    status, doc = await call(
        proxy,
        "/v1/usage/settle",
        {"reservation_id": d["reservation_id"], "usage": {"output_tokens": -5}},
    )
    assert status == 400
    assert "usage.output_tokens must be a non-negative integer" in doc["error"]["message"]
    assert await proxy.store.ledger(org) == []


async def test_a_limit_change_binds_the_next_request_on_another_instance(
    proxy_factory: ProxyFactory,
) -> None:
    a = await proxy_factory()
    b = await proxy_factory()
    a.store.pinned_now = b.store.pinned_now = 1_800_000_000
    org = await a.org("enterprise")
    key = await a.member(org, "cal")
    await exhaust_seat(a.store, org, "cal")
    await settings(a, org, enabled=True, member_consent="automatic")
    headers = {"x-mock-output-tokens": "100", "x-mock-input-tokens": "0"}
    assert (await b.post(key, message(max_tokens=100), headers=headers))[0] == 200
    await settings(a, org, monthly_limit="0")
    status, h, _ = await b.post(key, message(max_tokens=100), headers=headers)
    assert status == 429
    assert h["anthropic-ratelimit-unified-overage-disabled-reason"] == "org_spend_limit"
    await settings(a, org, monthly_limit=None)
    assert (await b.post(key, message(max_tokens=100), headers=headers))[0] == 200


async def test_month_boundary_restarts_spend_with_no_job(proxy: Proxy) -> None:
    nov_end = calendar.timegm((2026, 11, 30, 23, 59, 59))
    proxy.store.pinned_now = nov_end
    org = await proxy.org("enterprise")
    key = await proxy.member(org, "dee")
    await exhaust_seat(proxy.store, org, "dee")
    await proxy.store.client.hset(
        proxy.store.keys(org).members,
        mapping={"dee|s_end": nov_end + 10**6, "dee|w_end": nov_end + 10**6},
    )
    await settings(
        proxy, org, enabled=True, member_consent="automatic", reservation_policy="strict"
    )
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/dee", json={"monthly_limit": "0.15"}
    )
    headers = {"x-mock-output-tokens": "9000", "x-mock-input-tokens": "0"}
    assert (await proxy.post(key, message(max_tokens=9000), headers=headers))[0] == 200
    status, h, _body = await proxy.post(key, message(max_tokens=9000), headers=headers)
    assert status == 429
    assert int(h["retry-after"]) == 1
    proxy.store.pinned_now = nov_end + 1  # 2026-12-01 00:00:00 UTC
    assert (await proxy.post(key, message(max_tokens=9000), headers=headers))[0] == 200
    spend = await proxy.store.member_fields(org, "dee", ("spend_p", "spend"))
    assert spend == {"spend_p": "2026-12", "spend": str(9000 * OUT)}
    s = await proxy.store.org_settings(org)
    assert (s["spend_p"], s["spend"]) == ("2026-12", str(9000 * OUT))
    periods = [r["period"] for r in await proxy.store.ledger(org)]
    assert periods == ["2026-11", "2026-12"]


async def test_sdk_stops_at_a_refusal_with_x_should_retry(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    org = await proxy.org("team")
    key = await proxy.member(org, "eva")
    await proxy.post(key, message(max_tokens=300_000), headers={"x-mock-output-tokens": "300000"})
    upstream_calls = len(proxy.mock.requests)
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=key)  # default 2 retries
    async with client:
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(
                model="claude-sonnet-5-5",
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
            )
    assert "You've hit your session limit" in str(info.value)
    assert len(proxy.mock.requests) == upstream_calls
    async with proxy.session.get(proxy.url + "/metrics") as r:
        text = await r.text()
    # one refusal: the SDK did not retry
    assert 'eup_admission_decisions_total{mode="deny",reason="org_level_disabled"} 1.0' in text


async def test_webhook_reload_is_retried_confirmed_once_and_never_doubled(
    proxy_factory: ProxyFactory, aiohttp_server: Any
) -> None:
    posts: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(status=500 if len(posts) == 1 else 200)

    app = web.Application()
    app.router.add_post("/reload", hook)
    hook_server = await aiohttp_server(app)
    proxy = await proxy_factory(
        payments={"provider": "webhook", "webhook_url": str(hook_server.make_url("/reload"))}
    )
    proxy.store.pinned_now = 1_800_000_000
    org = await proxy.org("team")
    key = await proxy.member(org, "fox")
    await exhaust_seat(proxy.store, org, "fox")
    await settings(
        proxy,
        org,
        enabled=True,
        auto_reload={"enabled": True, "threshold": "1.00", "amount": "2.00"},
    )
    await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{org}/extra-usage/purchases",
        json={"amount": "1.50", "idempotency_key": "buy"},
    )
    headers = {"x-mock-output-tokens": "40000", "x-mock-input-tokens": "0"}  # $0.60
    for _ in range(2):  # 1.50 -> 0.90 (reload requested) -> 0.30 (still pending: no second)
        assert (await proxy.post(key, message(max_tokens=40000), headers=headers))[0] == 200
    for task in list(
        proxy.server.app[__import__("proxy.http.appkeys").http.appkeys.PAYMENTS].webhooks.tasks
    ):
        await task
    assert len(posts) == 2  # one reload, delivered on the second attempt
    assert posts[0] == posts[1]
    reload_id = posts[0]["reload_id"]
    assert posts[0]["amount"] == "2.00"
    s = await proxy.store.org_settings(org)
    assert s["ar_pending"] == reload_id
    path = f"/admin/v1/orgs/{org}/extra-usage/reloads/{reload_id}/confirm"
    status, body = await proxy.admin("POST", path)
    assert (status, body["balance"], body["replay"]) == (200, "2.30", False)
    status, body = await proxy.admin("POST", path)
    assert (status, body["balance"], body["replay"]) == (200, "2.30", True)
    status, _ = await proxy.admin("POST", f"/admin/v1/orgs/{org}/extra-usage/reloads/nope/confirm")
    assert status == 404
    assert not (await proxy.store.org_settings(org)).get("ar_pending")
    ledger = await proxy.store.ledger(org)
    assert [r["kind"] for r in ledger].count("reload") == 1
    await proxy.settled()
    async with proxy.session.get(proxy.url + "/metrics") as r:
        text = await r.text()
    assert 'eup_auto_reloads_total{outcome="webhook_retry"} 1.0' in text


def test_mock_is_importable() -> None:
    assert MockUpstream().events == 10


async def test_org_labels_only_when_enabled(proxy_factory: ProxyFactory) -> None:
    for enabled in (False, True):
        proxy = await proxy_factory(metrics={"org_labels": enabled})
        proxy.store.pinned_now = 1_800_000_000
        org = await proxy.org("enterprise")
        key = await proxy.member(org, "ola")
        await exhaust_seat(proxy.store, org, "ola")
        await settings(proxy, org, enabled=True, member_consent="automatic")
        assert (await proxy.post(key, message(max_tokens=10)))[0] == 200
        await proxy.settled()  # spend is counted on the settlement's reply, after the answer
        async with proxy.session.get(proxy.url + "/metrics") as r:
            text = await r.text()
        assert (f'eup_extra_usage_spend_usd_total{{org="{org}"}}' in text) == enabled
        assert 'member="' not in text  # never member ids
