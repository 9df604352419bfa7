"""Admin API: route × role × foreign org, extra usage requests, the audit log, validation."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Proxy, ProxyFactory

READ = [
    ("GET", "/admin/v1/orgs/{org}"),
    ("GET", "/admin/v1/orgs/{org}/extra-usage"),
    ("GET", "/admin/v1/orgs/{org}/extra-usage/requests"),
    ("GET", "/admin/v1/orgs/{org}/usage"),
    ("GET", "/admin/v1/orgs/{org}/audit"),
    ("GET", "/admin/v1/orgs/{org}/members/mia"),
]
CHANGE = [
    ("PATCH", "/admin/v1/orgs/{org}/extra-usage", {"monthly_limit": "100.00"}),
    ("PUT", "/admin/v1/orgs/{org}/extra-usage/tiers/standard", {"monthly_limit": "5"}),
    ("PUT", "/admin/v1/orgs/{org}/extra-usage/members/mia", {"monthly_limit": "5"}),
    ("PUT", "/admin/v1/orgs/{org}/members/newbie", {"role": "member", "tier": "standard"}),
    ("POST", "/admin/v1/orgs/{org}/members/mia/keys", None),
]
OPERATOR_ONLY = [
    ("PATCH", "/admin/v1/orgs/{org}", {"name": "x"}),
    ("POST", "/admin/v1/orgs/{org}/members/mia/admin-tokens", None),
]


async def tokens(proxy: Proxy, org: str) -> dict[str, str]:
    out = {}
    for member, role in (
        ("olga", "primary_owner"),
        ("otto", "owner"),
        ("ada", "admin"),
        ("mia", "member"),
    ):
        await proxy.member(org, member, role=role)
        _, tok = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/{member}/admin-tokens")
        out[role] = tok["token"]
    return out


async def test_route_role_and_foreign_org_matrix(proxy: Proxy) -> None:
    org = await proxy.org("enterprise")
    other = await proxy.org("enterprise")
    toks = await tokens(proxy, org)
    foreign = (await tokens(proxy, other))["primary_owner"]
    expected_read = {"primary_owner": 200, "owner": 200, "admin": 200, "member": 403}
    for method, path in READ:
        for role, token in toks.items():
            status, body = await proxy.admin(method, path.format(org=org), token=token)
            assert status == expected_read[role], (method, path, role, body)
        status, _ = await proxy.admin(method, path.format(org=org), token=foreign)
        assert status == 404, (method, path)  # another org does not exist for you
    expected_change = {
        "primary_owner": (200, 201),
        "owner": (200, 201),
        "admin": (403,),
        "member": (403,),
    }
    for method, path, body in CHANGE:
        for role, token in toks.items():
            status, doc = await proxy.admin(method, path.format(org=org), token=token, json=body)
            assert status in expected_change[role], (method, path, role, doc)
        status, _ = await proxy.admin(method, path.format(org=org), token=foreign, json=body)
        assert status == 404
    for method, path, body in OPERATOR_ONLY:
        for token in toks.values():
            status, _ = await proxy.admin(method, path.format(org=org), token=token, json=body)
            assert status == 403
    status, me = await proxy.admin("GET", "/admin/v1/me", token=toks["admin"])
    assert me == {
        "actor": "member:ada",
        "role": "admin",
        "org_id": org,
        "member_id": "ada",
        "org_name": org,
        "plan": "enterprise",
    }


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"monthly_limit": "-5"}, 400, "must not be negative"),
        ({"monthly_limit": "abc"}, 400, "decimal amount"),
        ({"monthly_limit": 12.5}, 400, "not a float"),
        ({"monthly_limit": "1.0000000001"}, 400, "more than 9 decimal places"),
        ({"enabled": "yes"}, 400, "enabled: must be true or false"),
        ({"member_scope": "all"}, 409, "only Team organizations"),
        ({"auto_reload": {"enabled": True}}, 409, "only Team organizations"),
        ({"member_consent": "sometimes"}, 400, "member_consent: must be one of"),
        ({}, 400, "nothing to change"),
    ],
)
async def test_validation_changes_nothing(
    proxy: Proxy, body: dict[str, Any], status: int, needle: str
) -> None:
    org = await proxy.org("enterprise")
    before = await proxy.store.org_settings(org)
    got, doc = await proxy.admin("PATCH", f"/admin/v1/orgs/{org}/extra-usage", json=body)
    assert got == status, doc
    assert needle in doc["error"]["message"]
    assert await proxy.store.org_settings(org) == before


async def test_team_only_and_enterprise_only_routes(proxy: Proxy) -> None:
    team = await proxy.org("team")
    ent = await proxy.org("enterprise")
    await proxy.member(team, "t1")
    await proxy.member(ent, "e1")
    status, _doc = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{team}/extra-usage/tiers/standard", json={"monthly_limit": "1"}
    )
    assert status == 409
    status, _ = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{ent}/extra-usage/tiers/gold", json={"monthly_limit": "1"}
    )
    assert status == 404
    status, _ = await proxy.admin(
        "POST",
        f"/admin/v1/orgs/{ent}/extra-usage/purchases",
        json={"amount": "1", "idempotency_key": "k"},
    )
    assert status == 409
    status, _ = await proxy.admin(
        "PATCH", f"/admin/v1/orgs/{team}/extra-usage", json={"requests_enabled": True}
    )
    assert status == 409
    status, _ = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{team}/extra-usage/members/t1", json={"monthly_limit": "1"}
    )
    assert status == 409
    status, _ = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{ent}/extra-usage/members/nobody", json={"monthly_limit": "1"}
    )
    assert status == 404


async def test_extra_usage_requests_flow(proxy_factory: ProxyFactory, aiohttp_server: Any) -> None:
    announced: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        announced.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/n", hook)
    hook_server = await aiohttp_server(app)
    proxy = await proxy_factory(notifications={"webhook_url": str(hook_server.make_url("/n"))})
    org = await proxy.org("enterprise")
    key = await proxy.member(org, "rita")
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/rita", json={"monthly_limit": "20.00"}
    )
    await proxy.admin("PATCH", f"/admin/v1/orgs/{org}/extra-usage", json={"enabled": True})
    headers = {"x-api-key": key}
    async with proxy.session.post(
        proxy.url + "/v1/usage/me/extra-usage-requests",
        json={"amount": "30.00", "message": "launch week"},
        headers=headers,
    ) as r:
        assert r.status == 201
        req = await r.json()
    async with proxy.session.post(
        proxy.url + "/v1/usage/me/extra-usage-requests", json={}, headers=headers
    ) as r:
        assert (r.status, (await r.json())["id"]) == (200, req["id"])  # one pending each
    status, listed = await proxy.admin("GET", f"/admin/v1/orgs/{org}/extra-usage/requests")
    assert [r["id"] for r in listed["requests"]] == [req["id"]]
    assert listed["requests"][0]["amount"] == "30.00"
    path = f"/admin/v1/orgs/{org}/extra-usage/requests/{req['id']}"
    status, done = await proxy.admin("POST", path + "/approve")
    assert (status, done["state"], done["new_limit"]) == (200, "approved", "50.00")
    status, again = await proxy.admin("POST", path + "/approve")
    assert again["new_limit"] == "50.00"  # replayed, not raised twice
    status, _ = await proxy.admin("POST", path + "/dismiss")
    assert status == 409
    f = await proxy.store.member_fields(org, "rita", ("limit",))
    assert f["limit"] == str(50 * 10**9)
    assert announced and announced[0]["type"] == "extra_usage.request_created"
    # switched off
    await proxy.admin(
        "PATCH", f"/admin/v1/orgs/{org}/extra-usage", json={"requests_enabled": False}
    )
    async with proxy.session.post(
        proxy.url + "/v1/usage/me/extra-usage-requests", json={}, headers=headers
    ) as r:
        assert r.status == 403
    status, log = await proxy.admin("GET", f"/admin/v1/orgs/{org}/audit?limit=5")
    actions = [e["action"] for e in log["entries"]]
    # the approval and the limit it raised are one step, and one entry
    assert actions[:2] == ["extra_usage.update", "extra_usage_request.approved"]
    change = log["entries"][1]
    # in the API's words: the field as the API names it, the amount as it shows it
    assert change["before"]["members.rita.monthly_limit"] == "20.00"
    assert change["after"]["members.rita.monthly_limit"] == "50.00"
    assert "members · rita · monthly limit $20.00 → $50.00" in change["summary"]
    assert change["actor"] == "operator"


async def test_an_approval_that_another_limit_would_void_is_refused_or_raises_it(
    proxy: Proxy,
) -> None:
    """Kim asked $100; the $50 Standard tier limit would keep refusing her: approving is a
    409 that says so and changes nothing, unless the owner raises the tier limit with it."""
    org = await proxy.org("enterprise")
    key = await proxy.member(org, "kim")
    eu = f"/admin/v1/orgs/{org}/extra-usage"
    await proxy.admin("PATCH", eu, json={"enabled": True})
    await proxy.admin("PUT", eu + "/tiers/standard", json={"monthly_limit": "50.00"})
    k = proxy.store.keys(org)
    period = time.strftime("%Y-%m", time.gmtime())
    await proxy.store.client.hset(
        k.members, mapping={"kim|spend_p": period, "kim|spend": 50 * 10**9}
    )
    async with proxy.session.post(
        proxy.url + "/v1/usage/me/extra-usage-requests",
        json={"amount": "100.00"},
        headers={"x-api-key": key},
    ) as r:
        req = await r.json()
    path = f"{eu}/requests/{req['id']}/approve"
    before = await proxy.store.org_settings(org)
    status, body = await proxy.admin("POST", path)
    assert status == 409
    assert "Standard seat-tier limit ($50.00)" in body["error"]["message"]
    assert "raise_tier_limit" in body["error"]["message"]
    assert await proxy.store.org_settings(org) == before
    _, listed = await proxy.admin("GET", eu + "/requests")
    assert listed["requests"][0]["state"] == "pending"
    status, done = await proxy.admin("POST", path, json={"raise_tier_limit": True})
    assert status == 200, done
    assert (done["state"], done["granted"], done["new_tier_limit"]) == (
        "approved",
        "100.00",
        "150.00",
    )
    _, usage = await proxy.admin("GET", f"/admin/v1/orgs/{org}/usage")
    kim = next(m for m in usage["members"] if m["member_id"] == "kim")
    assert kim["binding"]["remaining"] == "100.00" and not kim["binding"]["reached"]
    # decided requests stay listed, with who decided and when
    _, listed = await proxy.admin("GET", eu + "/requests")
    assert listed["requests"][0]["decided_by"] and listed["requests"][0]["decided_at"]


async def test_approving_a_request_without_an_amount_needs_one(proxy: Proxy) -> None:
    org = await proxy.org("enterprise")
    key = await proxy.member(org, "lee")
    eu = f"/admin/v1/orgs/{org}/extra-usage"
    await proxy.admin("PATCH", eu, json={"enabled": True})
    await proxy.admin("PUT", eu + "/members/lee", json={"monthly_limit": "5.00"})
    async with proxy.session.post(
        proxy.url + "/v1/usage/me/extra-usage-requests", json={}, headers={"x-api-key": key}
    ) as r:
        req = await r.json()
    path = f"{eu}/requests/{req['id']}/approve"
    status, body = await proxy.admin("POST", path)
    assert status == 400 and body["error"]["message"].startswith("amount: required")
    status, body = await proxy.admin("POST", path, json={"amount": "12.345"})
    assert status == 400
    status, done = await proxy.admin("POST", path, json={"amount": "20.00"})
    assert (status, done["new_limit"], done["granted"]) == (200, "25.00", "20.00")
