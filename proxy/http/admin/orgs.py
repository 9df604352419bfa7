"""Admin API, provisioning: organizations, members, proxy keys, admin tokens, the audit log
(SPEC §4.3). Each handler parses, calls one operation of ``proxy.admin`` and renders."""

from __future__ import annotations

from aiohttp import web

from proxy.admin import audit as audit_log
from proxy.admin import members, orgs
from proxy.admin.orgs import UNSET, OrgChange
from proxy.core.validate import boolean, choice, env_name, only, string
from proxy.core.vocabulary import Plan, Role
from proxy.http.admin.common import actor, member_id, org_id, page_size, tiers
from proxy.http.appkeys import CONFIG, STORE
from proxy.http.body import json_object

routes = web.RouteTableDef()

PROXY_KEY, ADMIN_TOKEN = members.CREDENTIAL_KINDS
# an answer that shows a secret (once) is never kept by a cache or a browser
SECRET_SHOWN = {"cache-control": "no-store"}


@routes.get("/admin/v1/me")
async def me(request: web.Request) -> web.Response:
    """Who the admin token acts for: the admin page starts here."""
    return web.json_response(await orgs.whoami(request.app[STORE], await actor(request)))


@routes.get("/admin/v1/orgs/{org}/audit")
async def audit(request: web.Request) -> web.Response:
    """The audit log, newest first: who, what, before, after, when."""
    org = org_id(request)
    count = page_size(request, 100, audit_log.MAX_ENTRIES)
    cursor = request.query.get("cursor")
    view = await audit_log.audit(request.app[STORE], await actor(request), org, count, cursor)
    return web.json_response(view)


@routes.post("/admin/v1/orgs")
async def create_org(request: web.Request) -> web.Response:
    who = await actor(request)
    doc = await json_object(request)
    only(doc, {"id", "name", "plan", "upstream_credential"})
    view = await orgs.create_org(
        request.app[STORE],
        who,
        request.app[CONFIG].upstream,
        org=string(doc, "id", max_len=63) or "",
        plan=choice(doc, "plan", Plan.ALL) or "",
        name=string(doc, "name", required=False),
        credential=env_name(doc, "upstream_credential"),
    )
    return web.json_response(view, status=201)


@routes.get("/admin/v1/orgs/{org}")
async def get_org(request: web.Request) -> web.Response:
    org = org_id(request)
    return web.json_response(await orgs.get_org(request.app[STORE], await actor(request), org))


@routes.patch("/admin/v1/orgs/{org}")
async def patch_org(request: web.Request) -> web.Response:
    org = org_id(request)
    who = await actor(request)
    doc = await json_object(request)
    only(doc, {"name", "plan", "upstream_credential", "enabled"})
    change = OrgChange(
        name=string(doc, "name") if "name" in doc else UNSET,
        plan=choice(doc, "plan", Plan.ALL) if "plan" in doc else UNSET,
        credential=env_name(doc, "upstream_credential") if "upstream_credential" in doc else UNSET,
        enabled=boolean(doc, "enabled") if "enabled" in doc else UNSET,
    )
    config = request.app[CONFIG]
    return web.json_response(
        await orgs.patch_org(request.app[STORE], who, config.upstream, org, change)
    )


@routes.put("/admin/v1/orgs/{org}/members/{member}")
async def put_member(request: web.Request) -> web.Response:
    org, member = org_id(request), member_id(request)
    who = await actor(request)
    doc = await json_object(request)
    only(doc, {"role", "tier", "enabled"})
    view, created = await members.put_member(
        request.app[STORE],
        who,
        tiers(request),
        org,
        member,
        role=choice(doc, "role", Role.ALL) or Role.MEMBER,
        tier=string(doc, "tier") or "",
        enabled=bool(boolean(doc, "enabled", required=False, default=True)),
    )
    return web.json_response(view, status=201 if created else 200)


@routes.get("/admin/v1/orgs/{org}/members/{member}")
async def get_member(request: web.Request) -> web.Response:
    org, member = org_id(request), member_id(request)
    view = await members.get_member(request.app[STORE], await actor(request), org, member)
    return web.json_response(view)


@routes.delete("/admin/v1/orgs/{org}/members/{member}")
async def delete_member(request: web.Request) -> web.Response:
    org, member = org_id(request), member_id(request)
    view = await members.delete_member(request.app[STORE], await actor(request), org, member)
    return web.json_response(view)


async def _issue(request: web.Request, kind: str) -> web.Response:
    org, member = org_id(request), member_id(request)
    cred_id, secret = await members.issue(
        request.app[STORE], await actor(request), org, member, kind
    )
    names = ("key_id", "key") if kind == PROXY_KEY else ("token_id", "token")
    return web.json_response(
        {names[0]: cred_id, names[1]: secret, "member_id": member},
        status=201,
        headers=SECRET_SHOWN,
    )


async def _revoke(request: web.Request, kind: str) -> web.Response:
    org, member = org_id(request), member_id(request)
    cred_id = request.match_info["cred_id"]
    view = await members.revoke(
        request.app[STORE], await actor(request), org, member, kind, cred_id
    )
    return web.json_response(view)


@routes.post("/admin/v1/orgs/{org}/members/{member}/keys")
async def issue_key(request: web.Request) -> web.Response:
    return await _issue(request, PROXY_KEY)


@routes.delete("/admin/v1/orgs/{org}/members/{member}/keys/{cred_id}")
async def revoke_key(request: web.Request) -> web.Response:
    return await _revoke(request, PROXY_KEY)


@routes.post("/admin/v1/orgs/{org}/members/{member}/admin-tokens")
async def issue_admin_token(request: web.Request) -> web.Response:
    return await _issue(request, ADMIN_TOKEN)


@routes.delete("/admin/v1/orgs/{org}/members/{member}/admin-tokens/{cred_id}")
async def revoke_admin_token(request: web.Request) -> web.Response:
    return await _revoke(request, ADMIN_TOKEN)
