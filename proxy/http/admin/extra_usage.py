"""Admin API, extra usage: settings, spend limits, prepaid credit, reload confirmation.

Owners and the primary owner change these (or the operator); admins read them. Every change
is one audited write (write.lua) that binds the very next admission in every proxy instance,
because admission reads the settings in the same script that decides. Team-only settings on
an Enterprise org, and the reverse, are refused with 409 and change nothing.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.core.errors import Conflict, InvalidRequest, NotFound
from proxy.core.money import format_usd, stored_usd
from proxy.core.validate import amount, boolean, choice, limit, only, string
from proxy.http.admin.orgs import actor_for, member_id, org_id, org_or_404
from proxy.http.appkeys import CONFIG, PAYMENTS, STORE
from proxy.http.body import json_object
from proxy.storage.model import (
    CONSENTS,
    DEFAULT_CONSENT,
    DEFAULT_REQUESTS_ON,
    DEFAULT_SCOPE,
    DELETE,
    ENTERPRISE,
    OFF,
    ON,
    RESERVATION_POLICIES,
    SCOPES,
    TEAM,
    Member,
    Org,
    consent_of,
    flag,
)
from proxy.storage.store import StoreRefusal

routes = web.RouteTableDef()

TEAM_ONLY = ("member_scope", "auto_reload")
ENTERPRISE_ONLY = ("requests_enabled",)


def extra_usage_view(s: dict[str, str], tiers: list[str]) -> dict[str, Any]:
    plan = s.get(Org.PLAN)
    doc: dict[str, Any] = {
        "plan": plan,
        "enabled": s.get(Org.EU_ON) == ON,
        "member_consent": consent_of(s),
        "monthly_limit": stored_usd(s.get(Org.LIMIT)),
        "reservation_policy": s.get(Org.POLICY) or None,
        "period": s.get(Org.SPEND_PERIOD) or None,
    }
    if plan == TEAM:
        doc["member_scope"] = s.get(Org.SCOPE, DEFAULT_SCOPE)
        doc["balance"] = format_usd(int(s.get(Org.BALANCE) or 0))
        doc["auto_reload"] = {
            "enabled": s.get(Org.AUTO_RELOAD_ON) == ON,
            "threshold": stored_usd(s.get(Org.AUTO_RELOAD_THRESHOLD)),
            "amount": stored_usd(s.get(Org.AUTO_RELOAD_AMOUNT)),
            "pending_reload_id": s.get(Org.RELOAD_PENDING) or None,
        }
    else:
        doc["requests_enabled"] = s.get(Org.REQUESTS_ON, DEFAULT_REQUESTS_ON) != OFF
        doc["tier_limits"] = {t: stored_usd(s.get(Org.tier_limit(t))) for t in tiers}
    return doc


def _plan_fields(doc: dict[str, Any], plan: str) -> None:
    wrong = TEAM_ONLY if plan == ENTERPRISE else ENTERPRISE_ONLY
    for name in wrong:
        if name in doc:
            other = "Team" if plan == ENTERPRISE else "Enterprise"
            raise Conflict(
                f"{name}: only {other} organizations have this setting; this one is "
                f"on the {plan} plan"
            )


def _auto_reload(value: Any, current: dict[str, str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidRequest("auto_reload: must be an object {enabled, threshold, amount}")
    only(value, {"enabled", "threshold", "amount"})
    fields: dict[str, str] = {}
    enabled = boolean(value, "enabled", required=False)
    if enabled is not None:
        fields[Org.AUTO_RELOAD_ON] = flag(enabled)
    if "threshold" in value:
        threshold = amount(value["threshold"], "auto_reload.threshold")
        fields[Org.AUTO_RELOAD_THRESHOLD] = str(threshold)
    if "amount" in value:
        reload = amount(value["amount"], "auto_reload.amount", allow_zero=False)
        fields[Org.AUTO_RELOAD_AMOUNT] = str(reload)

    def after(name: str) -> str | None:
        return fields.get(name, current.get(name))

    if after(Org.AUTO_RELOAD_ON) == ON and not after(Org.AUTO_RELOAD_AMOUNT):
        raise InvalidRequest("auto_reload.amount: required to enable auto-reload")
    if after(Org.AUTO_RELOAD_ON) == ON and not after(Org.AUTO_RELOAD_THRESHOLD):
        raise InvalidRequest("auto_reload.threshold: required to enable auto-reload")
    return fields


@routes.get("/admin/v1/orgs/{org}/extra-usage")
async def get_settings(request: web.Request) -> web.Response:
    org = org_id(request)
    await actor_for(request, org)
    s = await org_or_404(request.app[STORE], org)
    return web.json_response(extra_usage_view(s, list(request.app[CONFIG].tiers)))


@routes.patch("/admin/v1/orgs/{org}/extra-usage")
async def patch_settings(request: web.Request) -> web.Response:
    org = org_id(request)
    actor = await actor_for(request, org, change=True)
    doc = await json_object(request)
    only(
        doc,
        {
            "enabled",
            "member_scope",
            "member_consent",
            "monthly_limit",
            "auto_reload",
            "requests_enabled",
            "reservation_policy",
        },
    )
    store = request.app[STORE]
    current = await org_or_404(store, org)
    plan = current[Org.PLAN]
    _plan_fields(doc, plan)
    fields: dict[str, str] = {}
    if "enabled" in doc:
        fields[Org.EU_ON] = flag(bool(boolean(doc, "enabled")))
    if "member_scope" in doc:
        fields[Org.SCOPE] = choice(doc, "member_scope", SCOPES) or DEFAULT_SCOPE
    if "member_consent" in doc:
        fields[Org.CONSENT] = choice(doc, "member_consent", CONSENTS) or DEFAULT_CONSENT[plan]
    if "monthly_limit" in doc:
        value = limit(doc, "monthly_limit")
        fields[Org.LIMIT] = DELETE if value is None else str(value)
    if "auto_reload" in doc:
        fields.update(_auto_reload(doc["auto_reload"], current))
    if "requests_enabled" in doc:
        fields[Org.REQUESTS_ON] = flag(bool(boolean(doc, "requests_enabled")))
    if "reservation_policy" in doc:
        if doc["reservation_policy"] is None:
            fields[Org.POLICY] = DELETE
        else:
            fields[Org.POLICY] = choice(doc, "reservation_policy", RESERVATION_POLICIES) or ""
    if not fields:
        raise InvalidRequest("nothing to change: send at least one setting")
    try:
        await store.update(
            org,
            "org",
            actor=actor.name,
            action="extra_usage.update",
            fields=fields,
            guards=[f"={Org.PLAN}={plan}"],
        )
    except StoreRefusal as exc:
        raise Conflict("the organization changed plan meanwhile; retry") from exc
    s = await store.org_settings(org)
    return web.json_response(extra_usage_view(s, list(request.app[CONFIG].tiers)))


@routes.put("/admin/v1/orgs/{org}/extra-usage/tiers/{tier}")
async def put_tier_limit(request: web.Request) -> web.Response:
    org = org_id(request)
    actor = await actor_for(request, org, change=True)
    tier = request.match_info["tier"]
    if tier not in request.app[CONFIG].tiers:
        raise NotFound(
            f"seat tier {tier!r} not found (configured: {', '.join(request.app[CONFIG].tiers)})"
        )
    doc = await json_object(request)
    only(doc, {"monthly_limit"})
    value = limit(doc, "monthly_limit")
    store = request.app[STORE]
    s = await org_or_404(store, org)
    if s[Org.PLAN] != ENTERPRISE:
        raise Conflict(
            "seat-tier spend limits: only Enterprise organizations have them; "
            "this one is on the team plan"
        )
    await store.update(
        org,
        "org",
        actor=actor.name,
        action="extra_usage.tier_limit",
        fields={Org.tier_limit(tier): DELETE if value is None else str(value)},
        guards=[f"={Org.PLAN}={ENTERPRISE}"],
    )
    return web.json_response(
        {"tier": tier, "monthly_limit": stored_usd(str(value) if value is not None else None)}
    )


@routes.put("/admin/v1/orgs/{org}/extra-usage/members/{member}")
async def put_member_setting(request: web.Request) -> web.Response:
    org, member = org_id(request), member_id(request)
    actor = await actor_for(request, org, change=True)
    doc = await json_object(request)
    store = request.app[STORE]
    s = await org_or_404(store, org)
    fields: dict[str, str] = {}
    if s[Org.PLAN] == TEAM:
        if "monthly_limit" in doc:
            raise Conflict("monthly_limit: per-member limits are an Enterprise setting")
        only(doc, {"enabled"})
        fields[Member.field(member, Member.EU)] = flag(bool(boolean(doc, "enabled")))
    else:
        if "enabled" in doc:
            raise Conflict(
                "enabled: on Enterprise every member has extra usage unless their "
                "monthly_limit is 0"
            )
        only(doc, {"monthly_limit"})
        value = limit(doc, "monthly_limit")
        fields[Member.field(member, Member.LIMIT)] = DELETE if value is None else str(value)
    try:
        await store.update(
            org,
            "members",
            actor=actor.name,
            action="extra_usage.member",
            fields=fields,
            guards=[f"+{Member.field(member, Member.TIER)}"],
        )
    except StoreRefusal as exc:
        raise NotFound(f"member {member!r} not found") from exc
    out: dict[str, Any] = {"member_id": member}
    if s[Org.PLAN] == TEAM:
        out["enabled"] = fields[Member.field(member, Member.EU)] == ON
    else:
        raw = fields[Member.field(member, Member.LIMIT)]
        out["monthly_limit"] = None if raw == DELETE else format_usd(int(raw))
    return web.json_response(out)


@routes.post("/admin/v1/orgs/{org}/extra-usage/purchases")
async def purchase(request: web.Request) -> web.Response:
    org = org_id(request)
    actor = await actor_for(request, org, change=True)
    doc = await json_object(request)
    only(doc, {"amount", "idempotency_key", "buy_ahead"})
    if "amount" not in doc:
        raise InvalidRequest('amount: field required (a decimal string such as "100.00")')
    nano = amount(doc["amount"], "amount", allow_zero=False)
    key = string(doc, "idempotency_key", max_len=128)
    ahead = boolean(doc, "buy_ahead", required=False, default=False)
    store = request.app[STORE]
    settings = await org_or_404(store, org)
    if settings.get(Org.PLAN) == TEAM and settings.get(Org.EU_ON) != ON and not ahead:
        # credit bought while extra usage is off waits unused: only when the owner says so
        raise Conflict(
            "extra usage is off for this organization: credit bought now is not used until "
            'it is turned on; send "buy_ahead": true to buy it ahead anyway'
        )
    try:
        result = await store.purchase(org, key or "", nano, actor.name)
    except StoreRefusal as exc:
        if exc.code == "unknown_org":
            raise NotFound(f"organization {org!r} not found") from exc
        if exc.code == "not_team":
            raise Conflict("purchases: only Team organizations have prepaid credit") from exc
        raise Conflict("idempotency_key: already used for a different amount") from exc
    return web.json_response(
        {
            "amount": format_usd(int(result["amount"])),
            "balance": format_usd(int(result["balance"])),
            "idempotency_key": key,
            "replay": result.get("replay") == "1",
        },
        status=200 if result.get("replay") == "1" else 201,
    )


@routes.post("/admin/v1/orgs/{org}/extra-usage/reloads/{reload_id}/confirm")
async def confirm_reload(request: web.Request) -> web.Response:
    """The payment provider confirms a reload (operator token)."""
    org = org_id(request)
    actor = await actor_for(request, org, operator_only=True)
    reload_id = request.match_info["reload_id"]
    try:
        result = await request.app[PAYMENTS].confirm(org, reload_id, actor.name)
    except StoreRefusal as exc:
        if exc.code in ("unknown_reload", "unknown_org"):
            raise NotFound(f"reload {reload_id!r} not found") from exc
        raise Conflict(f"reload cannot be confirmed: {exc.code}") from exc
    return web.json_response(
        {
            "reload_id": reload_id,
            "amount": format_usd(int(result["amount"])),
            "balance": format_usd(int(result["balance"])),
            "replay": result.get("replay") == "1",
        }
    )
