from __future__ import annotations

import orjson

from tests.conftest import Proxy


async def test_org_lifecycle_and_validation(proxy: Proxy) -> None:
    status, body = await proxy.admin(
        "POST", "/admin/v1/orgs", json={"id": "acme-prov", "name": "Acme", "plan": "team"}
    )
    assert status == 201
    assert body == {
        "id": "acme-prov",
        "name": "Acme",
        "plan": "team",
        "enabled": True,
        "upstream_credential": None,
    }
    status, body = await proxy.admin(
        "POST", "/admin/v1/orgs", json={"id": "acme-prov", "plan": "team"}
    )
    assert status == 409
    for bad, needle in [
        ({"id": "Bad Id", "plan": "team"}, "id: must be"),
        ({"id": "x1", "plan": "pro"}, "plan: must be one of team, enterprise"),
        ({"plan": "team"}, "id: field required"),
        ({"id": "x2", "plan": "team", "colour": 1}, "colour: unknown field"),
    ]:
        status, body = await proxy.admin("POST", "/admin/v1/orgs", json=bad)
        assert status == 400, bad
        assert needle in body["error"]["message"]
    status, body = await proxy.admin(
        "PATCH",
        "/admin/v1/orgs/acme-prov",
        json={"name": "Acme Inc", "upstream_credential": "UPSTREAM_API_KEY_ACME"},
    )
    assert status == 200
    assert body["name"] == "Acme Inc"
    assert body["upstream_credential"] == "UPSTREAM_API_KEY_ACME"
    status, body = await proxy.admin("GET", "/admin/v1/orgs/nope")
    assert status == 404
    status, body = await proxy.admin("GET", "/admin/v1/orgs/acme-prov", token="wrong")
    assert status == 401
    audit = await proxy.store.audit("acme-prov")
    assert [a["action"] for a in audit] == ["org.update", "org.create"]
    after = orjson.loads(audit[0]["after"])
    assert after["name"] == "Acme Inc"
    assert orjson.loads(audit[0]["before"])["name"] == "Acme"


async def test_members_keys_and_roles(proxy: Proxy) -> None:
    org = await proxy.org("enterprise")
    other = await proxy.org("team")
    status, body = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{org}/members/olga",
        json={"role": "primary_owner", "tier": "premium"},
    )
    assert status == 201
    status, body = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/members/mo", json={"role": "member", "tier": "gold"}
    )
    assert status == 400
    assert "unknown seat tier 'gold'" in body["error"]["message"]
    status, tok = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/olga/admin-tokens")
    assert status == 201
    owner = tok["token"]
    # the primary owner manages members and keys of their own org
    status, body = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{org}/members/mo",
        token=owner,
        json={"role": "admin", "tier": "standard"},
    )
    assert status == 201
    status, body = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/mo/keys", token=owner)
    assert status == 201
    assert body["key"].startswith(f"sk-eup-{org}-")
    # but not admin tokens, and not another org
    status, _ = await proxy.admin(
        "POST", f"/admin/v1/orgs/{org}/members/mo/admin-tokens", token=owner
    )
    assert status == 403
    status, _ = await proxy.admin("GET", f"/admin/v1/orgs/{other}", token=owner)
    assert status == 404
    status, _ = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{other}/members/x",
        token=owner,
        json={"role": "member", "tier": "standard"},
    )
    assert status == 404
    # exactly one primary owner: demoting them is refused, transferring demotes the old one
    status, body = await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/members/olga", json={"role": "owner", "tier": "premium"}
    )
    assert status == 409
    status, _ = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{org}/members/mo",
        json={"role": "primary_owner", "tier": "standard"},
    )
    assert status == 200
    status, body = await proxy.admin("GET", f"/admin/v1/orgs/{org}/members/olga")
    assert body["role"] == "owner"
    # an admin reads, a member gets 403
    status, tok = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/olga/admin-tokens")
    status, _ = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{org}/members/pat",
        token=tok["token"],
        json={"role": "member", "tier": "standard"},
    )
    assert status == 201  # olga is an owner now
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/members/pat", json={"role": "member", "tier": "standard"}
    )
    status, ptok = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/pat/admin-tokens")
    status, _ = await proxy.admin("GET", f"/admin/v1/orgs/{org}", token=ptok["token"])
    assert status == 403
    # revoking an admin token
    status, _ = await proxy.admin(
        "DELETE", f"/admin/v1/orgs/{org}/members/pat/admin-tokens/{ptok['token_id']}"
    )
    assert status == 200
    status, _ = await proxy.admin("GET", f"/admin/v1/orgs/{org}", token=ptok["token"])
    assert status == 401
    status, _ = await proxy.admin(
        "DELETE", f"/admin/v1/orgs/{org}/members/pat/admin-tokens/{ptok['token_id']}"
    )
    assert status == 404
    # deleting a member revokes their keys (401: the key is unknown now, not merely disabled)
    key = await proxy.member(org, "quin")
    status, _ = await proxy.admin("DELETE", f"/admin/v1/orgs/{org}/members/quin")
    assert status == 200
    status, _, _ = await proxy.post(key, {"model": "m", "max_tokens": 1, "messages": []})
    assert status == 401
    status, _ = await proxy.admin("DELETE", f"/admin/v1/orgs/{org}/members/nobody")
    assert status == 404
    status, _ = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/nobody/keys")
    assert status == 404


async def test_org_upstream_credential_replaces_the_default(
    proxy: Proxy, monkeypatch: object
) -> None:
    import os

    org = await proxy.org("team")
    key = await proxy.member(org, "uma")
    await proxy.admin(
        "PATCH", f"/admin/v1/orgs/{org}", json={"upstream_credential": "UPSTREAM_API_KEY_T1"}
    )
    status, _, body = await proxy.post(
        key, {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
    )
    assert status == 500
    assert b"UPSTREAM_API_KEY_T1" not in body  # a member never sees the variable's name
    assert b"not configured on the proxy" in body
    assert await proxy.store.ledger(org) == []
    os.environ["UPSTREAM_API_KEY_T1"] = "sk-ant-org-own"
    try:
        status, _, _ = await proxy.post(
            key, {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}
        )
    finally:
        del os.environ["UPSTREAM_API_KEY_T1"]
    assert status == 200
    assert proxy.mock.requests[-1]["headers"]["x-api-key"] == "sk-ant-org-own"


async def test_probes_and_metrics(proxy: Proxy) -> None:
    async with proxy.session.get(proxy.url + "/healthz") as r:
        assert r.status == 200
    async with proxy.session.get(proxy.url + "/readyz") as r:
        assert (await r.json())["status"] == "ready"
    org = await proxy.org("team")
    key = await proxy.member(org, "vic")
    await proxy.post(key, {"model": "claude-unknown-x", "max_tokens": 5, "messages": []})
    await proxy.settled()
    async with proxy.session.get(proxy.url + "/metrics") as r:
        text = await r.text()
    assert 'eup_admission_decisions_total{mode="included",reason="none"} 1.0' in text
    assert 'eup_unknown_model_requests_total{line="none"} 1.0' in text
    assert 'eup_tokens_total{kind="output_tokens",model="unknown"} 5.0' in text
