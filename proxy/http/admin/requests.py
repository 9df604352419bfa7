"""Extra usage requests (Enterprise): a member who hit their limit asks for more; owners list
them, approve (which raises the member's monthly limit) or dismiss them. New requests are
announced on the notification webhook. The feature can be switched off per organization."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from proxy.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from proxy.core.limits import BALANCE, ORG_LIMIT, ORG_OFF, TIER_LIMIT, plan_grant
from proxy.core.money import format_usd, stored_usd
from proxy.core.statements import current_period
from proxy.core.validate import amount, boolean, only, string
from proxy.http.admin.billing import MEMBER_STATE_FIELDS, member_state, org_state
from proxy.http.admin.orgs import actor_for, org_id, org_or_404
from proxy.http.appkeys import CONFIG, PAYMENTS, STORE
from proxy.http.auth import member_of_key
from proxy.http.body import json_object
from proxy.storage.model import DEFAULT_REQUESTS_ON, ENTERPRISE, OFF, Member, Org
from proxy.storage.store import Store, StoreRefusal

routes = web.RouteTableDef()


def view(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["id"],
        "member_id": r["member"],
        "state": r["state"],
        "amount": stored_usd(r.get("amount")),
        "message": r.get("message"),
        "created_at": r["created"],
        "decided_by": r.get("decided_by"),
        "decided_at": r.get("decided_at"),
        "new_limit": stored_usd(r.get("new_limit")),
        "granted": stored_usd(r.get("granted")),
        "new_tier_limit": stored_usd(r.get("new_tier_limit")),
        "new_org_limit": stored_usd(r.get("new_org_limit")),
    }


async def _all(store: Store, org: str) -> list[dict[str, Any]]:
    raw = await store.hash_fields(org, "requests")
    return sorted((orjson.loads(v) for v in raw.values()), key=lambda r: r["created"])


@routes.post("/v1/usage/me/extra-usage-requests")
async def ask(request: web.Request) -> web.Response:
    """A member asks the admins for more extra usage (Enterprise)."""
    store = request.app[STORE]
    who = await member_of_key(store, request)
    org, member = who["org"], who["member"]
    doc = await json_object(request, allow_empty=True)
    only(doc, {"amount", "message"})
    settings = await org_or_404(store, org)
    if settings[Org.PLAN] != ENTERPRISE:
        raise Conflict(
            "extra usage requests are an Enterprise feature; on Team an owner "
            "buys credit or raises the monthly limit"
        )
    if settings.get(Org.REQUESTS_ON, DEFAULT_REQUESTS_ON) == OFF:
        raise PermissionDenied(
            "your organization does not take extra usage requests; ask an owner directly"
        )
    wanted = amount(doc["amount"], "amount", allow_zero=False) if "amount" in doc else None
    note = string(doc, "message", required=False, max_len=1000)
    for r in await _all(store, org):
        if r["member"] == member and r["state"] == "pending":
            return web.json_response(view(r), status=200)  # one pending request each
    rid = f"eur_{secrets.token_hex(6)}"
    record = {
        "id": rid,
        "member": member,
        "state": "pending",
        "amount": str(wanted) if wanted else "",
        "message": note,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    await store.update(
        org,
        "requests",
        actor=f"member:{member}",
        action="extra_usage_request.create",
        fields={rid: orjson.dumps(record).decode()},
        guards=[f"-{rid}"],
    )
    url = request.app[CONFIG].notifications.webhook_url
    if url:
        request.app[PAYMENTS].webhooks.send(
            url, {"type": "extra_usage.request_created", "org_id": org, **view(record)}
        )
    return web.json_response(view(record), status=201)


@routes.get("/v1/usage/me/extra-usage-requests")
async def my_requests(request: web.Request) -> web.Response:
    """A member's own extra usage requests, newest first (the usage page shows their state)."""
    store = request.app[STORE]
    who = await member_of_key(store, request)
    mine = [view(r) for r in await _all(store, who["org"]) if r["member"] == who["member"]]
    return web.json_response({"member_id": who["member"], "requests": mine[::-1]})


@routes.get("/admin/v1/orgs/{org}/extra-usage/requests")
async def list_requests(request: web.Request) -> web.Response:
    org = org_id(request)
    await actor_for(request, org)
    state = request.query.get("state")
    rows = [
        view(r) for r in await _all(request.app[STORE], org) if state is None or r["state"] == state
    ]
    return web.json_response({"org_id": org, "requests": rows})


async def _decide(request: web.Request, decision: str) -> web.Response:
    org = org_id(request)
    actor = await actor_for(request, org, change=True)
    store = request.app[STORE]
    rid = request.match_info["request_id"]
    raw = (await store.hash_fields(org, "requests")).get(rid)
    if raw is None:
        raise NotFound(f"extra usage request {rid!r} not found")
    record = orjson.loads(raw)
    if record["state"] != "pending":
        if record["state"] == decision:
            return web.json_response(view(record))  # replayed decision
        raise Conflict(f"this request was already {record['state']}")
    doc = await json_object(request, allow_empty=True)
    if decision == "approved":
        record.update(await _grant(store, org, actor.name, record, doc))
    else:
        only(doc, set())
    record.update(
        state=decision,
        decided_by=actor.name,
        decided_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    try:
        await store.update(
            org,
            "requests",
            actor=actor.name,
            action=f"extra_usage_request.{decision}",
            fields={rid: orjson.dumps(record).decode()},
            guards=[f"={rid}={raw}"],
        )
    except StoreRefusal as exc:
        raise Conflict("the request changed meanwhile; reload and retry") from exc
    return web.json_response(view(record))


BLOCKED = {
    TIER_LIMIT: "the {tier} seat-tier limit ({limit}) would still stop them first: approve "
    'with "raise_tier_limit": true to raise it for every {tier} member, or raise it yourself',
    ORG_LIMIT: "the organization's monthly limit ({limit}) would still stop them first: "
    'approve with "raise_org_limit": true to raise it, or raise it yourself',
    ORG_OFF: "extra usage is off for the organization: turn it on first",
    BALANCE: "the prepaid balance would still stop them first: buy credit first",
}


async def _grant(
    store: Store, org: str, actor: str, record: dict[str, Any], doc: dict[str, Any]
) -> dict[str, Any]:
    """Approve: the member may spend ``amount`` more this month (the amount asked for unless
    the owner names another), their own limit raised by what it takes, and the tier's or the
    org's limit too when the owner says so; refused (409, nothing written) when another limit
    would still stop them, so that "approved" always means they can spend more."""
    only(doc, {"amount", "raise_tier_limit", "raise_org_limit"})
    if doc.get("amount") is not None:
        grant = amount(doc["amount"], "amount", allow_zero=False)
    elif record.get("amount"):
        grant = int(record["amount"])
    else:
        raise InvalidRequest(
            "amount: required, the request names no amount: how much more the member may "
            'spend this month, such as "50.00"'
        )
    raise_tier = bool(boolean(doc, "raise_tier_limit", required=False, default=False))
    raise_org = bool(boolean(doc, "raise_org_limit", required=False, default=False))
    member = record["member"]
    settings = await org_or_404(store, org)
    fields = await store.member_fields(org, member, MEMBER_STATE_FIELDS)
    if Member.TIER not in fields:
        raise NotFound(f"member {member!r} is no longer in the organization")
    tier = fields[Member.TIER]
    period = current_period(time.time())
    plan = plan_grant(
        org_state(settings, period),
        member_state(settings, fields, tier, period),
        grant,
        raise_tier=raise_tier,
        raise_org=raise_org,
    )
    if plan.blocked:
        limit = settings.get(Org.tier_limit(tier) if plan.blocked == TIER_LIMIT else Org.LIMIT)
        why = BLOCKED[plan.blocked].format(
            tier=tier.title(), limit=f"${format_usd(int(limit))}" if limit else ""
        )
        raise Conflict(f"approving ${format_usd(grant)} would not let {member} spend more: {why}")
    org_fields: dict[str, str] = {}
    if plan.tier_limit is not None:
        org_fields[Org.tier_limit(tier)] = str(plan.tier_limit)
    if plan.org_limit is not None:
        org_fields[Org.LIMIT] = str(plan.org_limit)
    if org_fields:
        await store.update(
            org, "org", actor=actor, action="extra_usage.settings", fields=org_fields
        )
    if plan.member_limit is not None:
        await store.update(
            org,
            "members",
            actor=actor,
            action="extra_usage.member",
            fields={Member.field(member, Member.LIMIT): str(plan.member_limit)},
            guards=[f"+{Member.field(member, Member.TIER)}"],
        )
    out: dict[str, Any] = {"granted": str(grant)}
    for name, value in (
        ("new_limit", plan.member_limit),
        ("new_tier_limit", plan.tier_limit),
        ("new_org_limit", plan.org_limit),
    ):
        if value is not None:
            out[name] = str(value)
    return out


@routes.post("/admin/v1/orgs/{org}/extra-usage/requests/{request_id}/approve")
async def approve(request: web.Request) -> web.Response:
    return await _decide(request, "approved")


@routes.post("/admin/v1/orgs/{org}/extra-usage/requests/{request_id}/dismiss")
async def dismiss(request: web.Request) -> web.Response:
    return await _decide(request, "dismissed")
