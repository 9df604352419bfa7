"""The check API (service token): first-party backends reserve, settle and release around
each message they serve themselves, through the same scripts as the proxy — so chat and
Claude Code draw from one seat allowance and one set of spend limits (SPEC §4.2).

A reservation id is opaque to the caller: it carries the org, the request id and the model,
so that settling needs no extra look-up.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from proxy.core.admission import Admission
from proxy.core.decision import iso, status_document, utilization
from proxy.core.errors import AuthenticationFailed, InvalidRequest, NotFound, ProxyError
from proxy.core.ids import MEMBER_ID, MODEL_ID, ORG_ID, model_error
from proxy.core.money import format_usd
from proxy.core.pricing import UsageError, usage_from_mapping
from proxy.core.refusals import Context, refusal_error
from proxy.core.request_fields import MAX_TOKENS_LIMIT
from proxy.core.tools import tool_bounds
from proxy.core.validate import boolean, only, string
from proxy.core.vocabulary import Decision, Mode, Reason, Refusal
from proxy.http.appkeys import CONFIG, METER, STORE, VERIFIED
from proxy.http.auth import bearer, is_token
from proxy.http.body import json_object
from proxy.http.member_routes import member_status
from proxy.storage.store import BY_MEMBER_ID, Store, StoreRefusal, check_op_id

routes = web.RouteTableDef()
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")


def answer(refusal: StoreRefusal, org: str, member: str = "") -> ProxyError:
    """A script's refusal as the check API answers it (``proxy.core.refusals``)."""
    return refusal_error(Context.CHECK, refusal.code, refusal.detail, org=org, member=member)


def service(request: web.Request) -> None:
    if not is_token(bearer(request), request.app[CONFIG].service_token):
        raise AuthenticationFailed("the check API needs the service token (Authorization: Bearer)")
    request[VERIFIED] = True


def reservation_id(org: str, request_id: str, model: str) -> str:
    raw = orjson.dumps([org, request_id, model])
    return "rsv_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_reservation(doc: dict[str, Any]) -> tuple[str, str, str]:
    rid = string(doc, "reservation_id", max_len=1024) or ""
    try:
        if not rid.startswith("rsv_"):
            raise ValueError
        raw = base64.urlsafe_b64decode(rid[4:] + "=" * (-len(rid[4:]) % 4))
        org, request_id, model = orjson.loads(raw)
        if not (
            isinstance(org, str)
            and ORG_ID.match(org)
            and isinstance(request_id, str)
            and REQUEST_ID.match(request_id)
            and isinstance(model, str)
            and MODEL_ID.match(model)
        ):
            raise ValueError
    except (ValueError, binascii.Error, orjson.JSONDecodeError, TypeError) as exc:
        raise NotFound("reservation_id: not a reservation this service issued") from exc
    return org, check_op_id(request_id), model


def _int(doc: dict[str, Any], name: str, *, low: int, high: int) -> int:
    value = doc.get(name)
    if value is None:
        raise InvalidRequest(f"{name}: field required")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 12.0 is the integer 12
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name}: must be an integer")
    if not low <= value <= high:
        raise InvalidRequest(f"{name}: must be between {low} and {high} (got {value})")
    return value


def decision_document(a: Admission, rsv: str | None, fit_message: str | None) -> dict[str, Any]:
    now = a.nano("now")
    allowed = a.allowed
    reason = a["reason"] or None
    if a["reason"] in Reason.SPEND_LIMITS:
        resets = a.nano("eu_reset")
    elif a["reason"] == Reason.BALANCE:
        resets = None
    else:
        resets = a.nano("claim_reset")
    return {
        "decision": Decision.ALLOW if allowed else Decision.DENY,
        "mode": a["mode"] or None,
        "reservation_id": rsv if allowed else None,
        "reserved": format_usd(a.nano("amount")) if allowed else None,
        "reason": reason,
        "message": fit_message,
        "retry_after": None if allowed or resets is None else max(1, resets - now),
        "resets_at": None if allowed or resets is None else iso(resets),
        "utilization": {
            "five_hour": round(utilization(a.nano("s_used"), a.nano("s_allow")), 4),
            "seven_day": round(utilization(a.nano("w_used"), a.nano("w_allow")), 4),
            "five_hour_resets_at": iso(a.nano("s_reset")),
            "seven_day_resets_at": iso(a.nano("w_reset")),
        },
        "extra_usage": {
            "available": a["eu_available"] == "1",
            "disabled_reason": a["eu_reason"] or None,
            "remaining": None
            if not a["eu_remaining"]
            else format_usd(max(0, a.nano("eu_remaining"))),
        },
    }


@routes.post("/v1/usage/check")
async def check(request: web.Request) -> web.Response:
    service(request)
    doc = await json_object(request)
    only(
        doc,
        {
            "org_id",
            "member_id",
            "model",
            "input_tokens",
            "max_tokens",
            "request_id",
            "accept_extra_usage",
            "reserve",
            "tools",
        },
    )
    org = string(doc, "org_id", max_len=63) or ""
    member = string(doc, "member_id", max_len=128) or ""
    model = string(doc, "model", max_len=256) or ""
    if not MODEL_ID.match(model):
        raise InvalidRequest(model_error(model))
    request_id = string(doc, "request_id", max_len=128) or ""
    if not ORG_ID.match(org):
        raise NotFound(f"organization {org!r} not found")
    if not MEMBER_ID.match(member):
        raise NotFound(f"member {member!r} not found")
    if not REQUEST_ID.match(request_id):
        raise InvalidRequest("request_id: 1-128 letters, digits, '.', '_', ':' or '-'")
    input_tokens = _int(doc, "input_tokens", low=0, high=100_000_000)
    max_tokens = _int(doc, "max_tokens", low=1, high=MAX_TOKENS_LIMIT)
    accept = bool(boolean(doc, "accept_extra_usage", required=False, default=False))
    reserve = bool(boolean(doc, "reserve", required=False, default=True))
    tools = tool_bounds(doc.get("tools"))
    meter = request.app[METER]
    prices = meter.prices
    # the backend counted the prompt: it bounds the prompt exactly; the estimate is the same.
    # The server tools it declares are inside both, as for the proxy's requests
    searches = tools.searches * prices.resolve(model).family.web_search
    max_cost = prices.max_cost(model, input_tokens + tools.fetched_tokens, max_tokens) + searches
    est_cost = prices.estimate(model, input_tokens, max_tokens) + searches
    try:
        a = await request.app[STORE].admit(
            org,
            check_op_id(request_id),
            who=BY_MEMBER_ID,
            credential=member,
            max_cost=max_cost,
            est_cost=est_cost,
            accept_extra=accept,
            reserve=reserve,
            unbounded=bool(tools.unbounded),
        )
    except StoreRefusal as exc:
        if exc.code == Refusal.UNBOUNDED_SERVER_TOOL:
            exc.detail = tools.unbounded
        if exc.code in (Refusal.MEMBER_DISABLED, Refusal.ORG_DISABLED):
            # every "this member may not" is the same answer: a denial, with its reason
            return web.json_response(
                {
                    "decision": Decision.DENY,
                    "reason": exc.code,
                    "mode": None,
                    "reservation_id": None,
                }
            )
        raise answer(exc, org, member) from exc
    meter.record_decision(a)
    message = None
    if not a.allowed:
        base = request.app[CONFIG].server.public_url  # the member's page, when it is known
        page = base + "/usage" if base else ""
        message = meter.refuse(a, model, input_tokens, max_cost, page).message
    rsv = reservation_id(org, request_id, model) if reserve else None
    return web.json_response(decision_document(a, rsv, message))


@routes.post("/v1/usage/settle")
async def settle(request: web.Request) -> web.Response:
    service(request)
    doc = await json_object(request)
    only(doc, {"reservation_id", "usage"})
    org, op_id, model = parse_reservation(doc)
    raw = doc.get("usage")
    if not isinstance(raw, dict):
        raise InvalidRequest("usage: field required (an object of token counts)")
    try:
        usage = usage_from_mapping(raw)
    except UsageError as exc:
        raise InvalidRequest(str(exc)) from exc
    try:
        result = await request.app[METER].charge(org, op_id, model, usage, source="check")
    except StoreRefusal as exc:
        raise answer(exc, org) from exc
    cost = int(result["cost"])
    extra = result["mode"] == Mode.EXTRA_USAGE
    return web.json_response(
        {
            "reservation_id": doc["reservation_id"],
            "mode": result["mode"],
            "cost": format_usd(cost),
            "charged": {
                "included_usage": format_usd(0 if extra else cost),
                "extra_usage": format_usd(cost if extra else 0),
                "balance": format_usd(int(result["balance"])) if result.get("balance") else None,
            },
            "overshoot": format_usd(int(result["overshoot"])),
            "replay": result.get("replay") == "1",
        }
    )


async def on_reservation(
    request: web.Request, call: Callable[[Store, str, str], Awaitable[dict[str, Any]]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A call whose body is only a reservation id (release, renew): the body, and the store's
    answer for the reservation."""
    service(request)
    doc = await json_object(request)
    only(doc, {"reservation_id"})
    org, op_id, _ = parse_reservation(doc)
    try:
        return doc, await call(request.app[STORE], org, op_id)
    except StoreRefusal as exc:
        raise answer(exc, org) from exc


@routes.post("/v1/usage/release")
async def release(request: web.Request) -> web.Response:
    doc, result = await on_reservation(request, Store.release)
    return web.json_response(
        {
            "reservation_id": doc["reservation_id"],
            "released": True,
            "amount": format_usd(int(result["released"])),
            "replay": result.get("replay") == "1",
        }
    )


@routes.post("/v1/usage/renew")
async def renew(request: web.Request) -> web.Response:
    """A long generation keeps its reservation: another ``policy.reservation_ttl_s`` from now
    (so that its room is not reclaimed and given to others while it runs). Idempotent."""
    doc, result = await on_reservation(request, Store.renew)
    expires = result.get("exp") or ""
    return web.json_response(
        {
            "reservation_id": doc["reservation_id"],
            # false: the reservation is over (settled or released): nothing left to keep
            "renewed": bool(expires),
            "expires_at": iso(int(expires)) if expires else None,
        }
    )


@routes.get("/v1/usage/orgs/{org}/members/{member}")
async def member(request: web.Request) -> web.Response:
    service(request)
    org, member_id = request.match_info["org"], request.match_info["member"]
    if not ORG_ID.match(org) or not MEMBER_ID.match(member_id):
        raise NotFound("no such member")
    a = await member_status(
        request.app[STORE], org, who=BY_MEMBER_ID, credential=member_id, context=Context.CHECK
    )
    return web.json_response({"org_id": org, **status_document(a)})
