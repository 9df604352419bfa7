"""Extra usage requests (Enterprise): the member's own (with their proxy key) and the owners'
(admin API). Each handler parses, calls ``proxy.admin.requests`` and renders."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.admin import requests
from proxy.admin.requests import Approval
from proxy.core.validate import amount, boolean, only, string
from proxy.core.vocabulary import RequestState
from proxy.http.admin.common import actor, org_id
from proxy.http.appkeys import CONFIG, PAYMENTS, STORE
from proxy.http.auth import member_actor_of_key
from proxy.http.body import json_object

routes = web.RouteTableDef()


@routes.post("/v1/usage/me/extra-usage-requests")
async def ask(request: web.Request) -> web.Response:
    """A member asks the admins for more extra usage (Enterprise)."""
    store = request.app[STORE]
    who = await member_actor_of_key(store, request)
    doc = await json_object(request, allow_empty=True)
    only(doc, {"amount", "message"})
    url = request.app[CONFIG].notifications.webhook_url
    webhooks = request.app[PAYMENTS].webhooks

    def announce(event: dict[str, Any]) -> None:
        webhooks.send(url, event)

    view, created = await requests.ask(
        store,
        who,
        amount=amount(doc["amount"], "amount", allow_zero=False) if "amount" in doc else None,
        message=string(doc, "message", required=False, max_len=1000),
        announce=announce if url else None,
    )
    return web.json_response(view, status=201 if created else 200)


@routes.get("/v1/usage/me/extra-usage-requests")
async def my_requests(request: web.Request) -> web.Response:
    """A member's own extra usage requests, newest first (the usage page shows their state)."""
    store = request.app[STORE]
    return web.json_response(await requests.mine(store, await member_actor_of_key(store, request)))


@routes.get("/admin/v1/orgs/{org}/extra-usage/requests")
async def list_requests(request: web.Request) -> web.Response:
    org = org_id(request)
    view = await requests.list_requests(
        request.app[STORE], await actor(request), org, request.query.get("state")
    )
    return web.json_response(view)


async def _decide(request: web.Request, decision: str) -> web.Response:
    org = org_id(request)
    who = await actor(request)
    doc = await json_object(request, allow_empty=True)
    if decision == RequestState.APPROVED:
        only(doc, {"amount", "raise_tier_limit", "raise_org_limit"})
        approval = Approval(
            amount=None
            if doc.get("amount") is None
            else amount(doc["amount"], "amount", allow_zero=False),
            raise_tier=bool(boolean(doc, "raise_tier_limit", required=False, default=False)),
            raise_org=bool(boolean(doc, "raise_org_limit", required=False, default=False)),
        )
    else:
        only(doc, set())
        approval = Approval()
    view = await requests.decide(
        request.app[STORE], who, org, request.match_info["request_id"], decision, approval
    )
    return web.json_response(view)


@routes.post("/admin/v1/orgs/{org}/extra-usage/requests/{request_id}/approve")
async def approve(request: web.Request) -> web.Response:
    return await _decide(request, RequestState.APPROVED)


@routes.post("/admin/v1/orgs/{org}/extra-usage/requests/{request_id}/dismiss")
async def dismiss(request: web.Request) -> web.Response:
    return await _decide(request, RequestState.DISMISSED)
