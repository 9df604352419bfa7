"""Admin API, extra usage: settings, spend limits, prepaid credit, reload confirmation. Each
handler parses, calls one operation of ``proxy.admin.settings`` and renders."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.admin import settings
from proxy.admin.orgs import UNSET
from proxy.admin.settings import AutoReload, SettingsChange
from proxy.core.errors import InvalidRequest
from proxy.core.validate import amount, boolean, choice, limit, only, string
from proxy.core.vocabulary import Consent, Policy, Scope
from proxy.http.admin.common import actor, member_id, org_id, tiers
from proxy.http.appkeys import PAYMENTS, STORE
from proxy.http.body import json_object

routes = web.RouteTableDef()

SETTINGS = {
    "enabled",
    "member_scope",
    "member_consent",
    "monthly_limit",
    "auto_reload",
    "requests_enabled",
    "reservation_policy",
}


def _auto_reload(value: Any) -> AutoReload:
    if not isinstance(value, dict):
        raise InvalidRequest("auto_reload: must be an object {enabled, threshold, amount}")
    only(value, {"enabled", "threshold", "amount"})
    enabled = boolean(value, "enabled", required=False)
    return AutoReload(
        enabled=UNSET if enabled is None else enabled,
        threshold=amount(value["threshold"], "auto_reload.threshold")
        if "threshold" in value
        else UNSET,
        amount=amount(value["amount"], "auto_reload.amount", allow_zero=False)
        if "amount" in value
        else UNSET,
    )


def settings_change(doc: dict[str, Any]) -> SettingsChange:
    only(doc, SETTINGS)

    def sent(name: str, read: Any) -> Any:
        return read() if name in doc else UNSET

    policy = doc.get("reservation_policy")
    return SettingsChange(
        enabled=sent("enabled", lambda: bool(boolean(doc, "enabled"))),
        member_scope=sent("member_scope", lambda: choice(doc, "member_scope", Scope.ALL)),
        member_consent=sent("member_consent", lambda: choice(doc, "member_consent", Consent.ALL)),
        monthly_limit=sent("monthly_limit", lambda: limit(doc, "monthly_limit")),
        auto_reload=_auto_reload(doc["auto_reload"]) if "auto_reload" in doc else None,
        requests_enabled=sent("requests_enabled", lambda: bool(boolean(doc, "requests_enabled"))),
        reservation_policy=sent(
            "reservation_policy",
            lambda: None if policy is None else choice(doc, "reservation_policy", Policy.ALL),
        ),
        sent=tuple(doc),
    )


@routes.get("/admin/v1/orgs/{org}/extra-usage")
async def get_settings(request: web.Request) -> web.Response:
    org = org_id(request)
    who = await actor(request)
    return web.json_response(
        await settings.get_settings(request.app[STORE], who, tiers(request), org)
    )


@routes.patch("/admin/v1/orgs/{org}/extra-usage")
async def patch_settings(request: web.Request) -> web.Response:
    org = org_id(request)
    who = await actor(request)
    change = settings_change(await json_object(request))
    view = await settings.patch_settings(request.app[STORE], who, tiers(request), org, change)
    return web.json_response(view)


@routes.put("/admin/v1/orgs/{org}/extra-usage/tiers/{tier}")
async def put_tier_limit(request: web.Request) -> web.Response:
    org = org_id(request)
    who = await actor(request)
    doc = await json_object(request)
    only(doc, {"monthly_limit"})
    view = await settings.put_tier_limit(
        request.app[STORE],
        who,
        tiers(request),
        org,
        request.match_info["tier"],
        limit(doc, "monthly_limit"),
    )
    return web.json_response(view)


@routes.put("/admin/v1/orgs/{org}/extra-usage/members/{member}")
async def put_member_setting(request: web.Request) -> web.Response:
    org, member = org_id(request), member_id(request)
    who = await actor(request)
    doc = await json_object(request)
    only(doc, {"enabled", "monthly_limit"})
    view = await settings.put_member_setting(
        request.app[STORE],
        who,
        org,
        member,
        enabled=bool(boolean(doc, "enabled")) if "enabled" in doc else UNSET,
        limit=limit(doc, "monthly_limit") if "monthly_limit" in doc else UNSET,
    )
    return web.json_response(view)


@routes.post("/admin/v1/orgs/{org}/extra-usage/purchases")
async def purchase(request: web.Request) -> web.Response:
    org = org_id(request)
    who = await actor(request)
    doc = await json_object(request)
    only(doc, {"amount", "idempotency_key", "buy_ahead"})
    if "amount" not in doc:
        raise InvalidRequest('amount: field required (a decimal string such as "100.00")')
    view, replay = await settings.purchase(
        request.app[STORE],
        who,
        org,
        amount=amount(doc["amount"], "amount", allow_zero=False),
        key=string(doc, "idempotency_key", max_len=128) or "",
        ahead=bool(boolean(doc, "buy_ahead", required=False, default=False)),
    )
    return web.json_response(view, status=200 if replay else 201)


@routes.post("/admin/v1/orgs/{org}/extra-usage/reloads/{reload_id}/confirm")
async def confirm_reload(request: web.Request) -> web.Response:
    """The payment provider confirms a reload (operator token)."""
    org = org_id(request)
    who = await actor(request)
    view = await settings.confirm_reload(
        request.app[PAYMENTS], who, org, request.match_info["reload_id"]
    )
    return web.json_response(view)
