"""Admin API, provisioning: organizations, members, proxy keys, admin tokens (SPEC §4.3).

The operator token provisions everything; an owner (or the primary owner) manages the members
and keys of their own organization; an admin reads; a member gets 403; no token reaches
another organization. Every change goes through write.lua, which records it in the org's
audit log in the same atomic step.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.config import allowed_credential
from proxy.core.credentials import (
    ADMIN_TOKEN_PREFIX,
    PROXY_KEY_PREFIX,
    hash_secret,
    new_id,
    new_secret,
)
from proxy.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from proxy.core.ids import MEMBER_ID, ORG_ID
from proxy.core.money import stored_usd
from proxy.core.validate import boolean, choice, env_name, only, string
from proxy.http.appkeys import CONFIG, STORE
from proxy.http.auth import Actor, admin_actor
from proxy.http.body import json_object
from proxy.storage.model import (
    DEFAULT_CONSENT,
    DEFAULT_ENABLED,
    DEFAULT_REQUESTS_ON,
    DEFAULT_ROLE,
    DEFAULT_SCOPE,
    DELETE,
    MEMBER_SEP,
    OFF,
    ON,
    PLANS,
    ROLES,
    TEAM,
    Member,
    Org,
    flag,
)
from proxy.storage.store import Store, StoreRefusal

routes = web.RouteTableDef()


async def actor_for(
    request: web.Request,
    org: str | None = None,
    *,
    change: bool = False,
    operator_only: bool = False,
) -> Actor:
    actor = await admin_actor(request.app[STORE], request, request.app[CONFIG].operator_token)
    if operator_only and not actor.operator:
        raise PermissionDenied("only the operator may do this")
    if org is not None:
        allowed = actor.can_change(org) if change else actor.can_read(org)
        if not allowed:
            if actor.org != org and not actor.operator:
                raise NotFound(f"organization {org!r} not found")
            raise PermissionDenied(
                f"role {actor.role!r} may not {'change' if change else 'read'} these settings"
            )
    return actor


def org_id(request: web.Request) -> str:
    org = request.match_info["org"]
    if not ORG_ID.match(org):
        raise NotFound(f"organization {org!r} not found")
    return org


def member_id(request: web.Request) -> str:
    member = request.match_info["member"]
    if not MEMBER_ID.match(member):
        raise NotFound(f"member {member!r} not found")
    return member


async def org_or_404(store: Store, org: str) -> dict[str, str]:
    settings = await store.org_settings(org)
    if not settings.get(Org.PLAN):
        raise NotFound(f"organization {org!r} not found")
    return settings


def credential_name(request: web.Request, doc: dict[str, Any]) -> str | None:
    """The variable an org names as its upstream credential: one the operator allowed."""
    name = env_name(doc, "upstream_credential")
    upstream = request.app[CONFIG].upstream
    if name and not allowed_credential(upstream, name):
        raise InvalidRequest(
            f"upstream_credential: must name a variable starting with "
            f"{upstream.credential_prefix} (the proxy's own secrets are never allowed)"
        )
    return name


def org_view(org: str, s: dict[str, str]) -> dict[str, Any]:
    return {
        "id": org,
        "name": s.get(Org.NAME, ""),
        "plan": s.get(Org.PLAN),
        "enabled": s.get(Org.ENABLED, DEFAULT_ENABLED) != OFF,
        "upstream_credential": s.get(Org.UPSTREAM) or None,
    }


def refusal_error(exc: StoreRefusal) -> Exception:
    if exc.code in ("not_found", "unknown_member"):
        return NotFound(f"{exc.detail or 'resource'} not found")
    if exc.code == "exists":
        return Conflict(f"{exc.detail} already exists")
    return Conflict(f"conflicting change ({exc.code}: {exc.detail})")


@routes.get("/admin/v1/me")
async def me(request: web.Request) -> web.Response:
    """Who the admin token acts for: the admin page starts here."""
    actor = await actor_for(request)
    out: dict[str, Any] = {
        "actor": actor.name,
        "role": actor.role,
        "org_id": actor.org,
        "member_id": actor.member,
    }
    if actor.org:
        s = await request.app[STORE].org_settings(actor.org)
        out.update(org_name=s.get(Org.NAME), plan=s.get(Org.PLAN))
    return web.json_response(out)


# how the admin API names and shows what the audit log's entries changed: an org field, or a
# member's ("<member>|<field>"); amounts as USD strings, flags as booleans
_ORG_WORDS: dict[str, tuple[str, str]] = {
    Org.LIMIT: ("monthly_limit", "usd"),
    Org.EU_ON: ("enabled", "flag"),
    Org.SCOPE: ("member_scope", ""),
    Org.CONSENT: ("member_consent", ""),
    Org.POLICY: ("reservation_policy", ""),
    Org.AUTO_RELOAD_ON: ("auto_reload.enabled", "flag"),
    Org.AUTO_RELOAD_THRESHOLD: ("auto_reload.threshold", "usd"),
    Org.AUTO_RELOAD_AMOUNT: ("auto_reload.amount", "usd"),
    Org.RELOAD_PENDING: ("auto_reload.pending_reload_id", ""),
    Org.REQUESTS_ON: ("requests_enabled", "flag"),
    Org.BALANCE: ("balance", "usd"),
    Org.UPSTREAM: ("upstream_credential", ""),
    Org.ENABLED: ("org_enabled", "flag"),
}
_MEMBER_WORDS: dict[str, tuple[str, str]] = {
    Member.LIMIT: ("monthly_limit", "usd"),
    Member.EU: ("extra_usage_enabled", "flag"),
    Member.ENABLED: ("enabled", "flag"),
    Member.CONSENT: ("extra_usage_consent", "flag"),
}


def _shown(value: Any, kind: str) -> Any:
    if value is None or kind == "":
        return value
    if kind == "flag":
        return value == ON
    try:
        return stored_usd(value)
    except (TypeError, ValueError):
        return value


def api_words(fields: dict[str, Any]) -> dict[str, Any]:
    """An audit entry's before/after in the admin API's words: ``{"limit": "100000000000"}``
    is ``{"monthly_limit": "100.00"}``, ``{"ann|eu": "1"}`` is
    ``{"members.ann.extra_usage_enabled": true}``, ``tlimit:premium`` is
    ``tier_limits.premium``; a field the API does not show keeps its name."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        record = _request_record(value)
        if record is not None:  # an extra usage request (its JSON record, by its id)
            out[f"requests.{name}"] = record
        elif name == Member.PRIMARY:
            out["primary_owner"] = value
        elif name.startswith(Org.TIER_LIMIT):
            out[f"tier_limits.{name[len(Org.TIER_LIMIT) :]}"] = _shown(value, "usd")
        elif MEMBER_SEP in name and not name.startswith(MEMBER_SEP):
            member, field = Member.split(name)
            word, kind = _MEMBER_WORDS.get(field, (field, ""))
            out[f"members.{member}.{word}"] = _shown(value, kind)
        else:
            word, kind = _ORG_WORDS.get(name, (name, ""))
            out[word] = _shown(value, kind)
    return out


_REQUEST_AMOUNTS = ("amount", "granted", "new_limit", "new_tier_limit", "new_org_limit")


def _request_record(value: Any) -> dict[str, Any] | None:
    """An extra usage request's stored record, with its amounts in USD; None for any other
    value."""
    if not isinstance(value, str) or not value.startswith("{"):
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or "member" not in doc or "state" not in doc:
        return None
    return {k: (_shown(v, "usd") if k in _REQUEST_AMOUNTS and v else v) for k, v in doc.items()}


def _said(value: Any, usd: bool) -> str:
    if value is None:
        return "Unlimited" if usd else "none"
    if value is True or value is False:
        return "on" if value else "off"
    return f"${value}" if usd and isinstance(value, str) else str(value)


def summary(before: dict[str, Any], after: dict[str, Any]) -> str:
    """``monthly limit $100.00 → Unlimited``: each field changed, in words."""
    parts = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name.startswith("requests."):
            r: dict[str, Any] = new or old or {}
            asked = f" for ${r['amount']}" if r.get("amount") else ""
            was = old["state"] if old else "none"
            granted = f", granted ${new['granted']}" if new and new.get("granted") else ""
            parts.append(
                f"extra usage request of {r['member']}{asked} {was} → {r['state']}{granted}"
            )
            continue
        label = name.replace("_", " ").replace(".", " · ")
        usd = name.endswith(("limit", "threshold", "amount", "balance")) or name.startswith(
            "tier_limits."
        )
        parts.append(f"{label} {_said(old, usd)} → {_said(new, usd)}")
    return "; ".join(parts)


@routes.get("/admin/v1/orgs/{org}/audit")
async def audit(request: web.Request) -> web.Response:
    """The audit log, newest first: who, what, before, after, when."""
    org = org_id(request)
    await actor_for(request, org)
    try:
        count = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError as exc:
        raise InvalidRequest("limit: must be an integer from 1 to 1000") from exc
    rows = await request.app[STORE].audit(org, count)
    return web.json_response(
        {
            "org_id": org,
            "entries": [_audit_entry(r) for r in rows],
        }
    )


_CREDENTIAL_WORDS = {
    "key.issue": "issued proxy key",
    "key.revoke": "revoked proxy key",
    "admin_token.issue": "issued admin token",
    "admin_token.revoke": "revoked admin token",
}


def _audit_entry(r: dict[str, str]) -> dict[str, Any]:
    before = api_words(orjson.loads(r["before"]) or {})
    after = api_words(orjson.loads(r["after"]) or {})
    said = summary(before, after)
    if r["action"] in _CREDENTIAL_WORDS:
        cred = after or before
        said = f"{_CREDENTIAL_WORDS[r['action']]} {cred.get('id')} of {cred.get('member')}"
    return {
        "id": r["id"],
        "at": int(r["ts"]),
        "actor": r["actor"],
        "action": r["action"],
        "before": before,
        "after": after,
        "summary": said,
    }


@routes.post("/admin/v1/orgs")
async def create_org(request: web.Request) -> web.Response:
    actor = await actor_for(request, operator_only=True)
    doc = await json_object(request)
    only(doc, {"id", "name", "plan", "upstream_credential"})
    org = string(doc, "id", max_len=63)
    assert org is not None
    if not ORG_ID.match(org):
        raise InvalidRequest(
            "id: must be 1-63 lowercase letters, digits or '-', starting with a letter or digit"
        )
    plan = choice(doc, "plan", PLANS)
    name = string(doc, "name", required=False) or org
    fields = {Org.PLAN: plan or "", Org.NAME: name, Org.ENABLED: DEFAULT_ENABLED}
    upstream = credential_name(request, doc)
    if upstream:
        fields[Org.UPSTREAM] = upstream
    # a new org starts with extra usage off and its plan's defaults written out
    fields.update({Org.EU_ON: OFF, Org.CONSENT: DEFAULT_CONSENT[plan or TEAM]})
    if plan == TEAM:
        fields.update({Org.SCOPE: DEFAULT_SCOPE, Org.BALANCE: "0"})
    else:
        fields[Org.REQUESTS_ON] = DEFAULT_REQUESTS_ON
    store = request.app[STORE]
    try:
        await store.create_org(org, fields, actor.name)
    except StoreRefusal as exc:
        raise Conflict(f"organization {org!r} already exists") from exc
    return web.json_response(org_view(org, fields), status=201)


@routes.get("/admin/v1/orgs/{org}")
async def get_org(request: web.Request) -> web.Response:
    org = org_id(request)
    await actor_for(request, org)
    return web.json_response(org_view(org, await org_or_404(request.app[STORE], org)))


@routes.patch("/admin/v1/orgs/{org}")
async def patch_org(request: web.Request) -> web.Response:
    org = org_id(request)
    actor = await actor_for(request, org, operator_only=True)
    doc = await json_object(request)
    only(doc, {"name", "plan", "upstream_credential", "enabled"})
    store = request.app[STORE]
    await org_or_404(store, org)
    fields: dict[str, str] = {}
    if "name" in doc:
        fields[Org.NAME] = string(doc, "name") or ""
    if "plan" in doc:
        fields[Org.PLAN] = choice(doc, "plan", PLANS) or ""
    if "upstream_credential" in doc:
        fields[Org.UPSTREAM] = credential_name(request, doc) or DELETE
    if "enabled" in doc:
        fields[Org.ENABLED] = flag(bool(boolean(doc, "enabled")))
    await store.update(
        org, "org", actor=actor.name, action="org.update", fields=fields, guards=[f"+{Org.PLAN}"]
    )
    return web.json_response(org_view(org, await store.org_settings(org)))


def member_view(org: str, member: str, f: dict[str, str]) -> dict[str, Any]:
    return {
        "org_id": org,
        "member_id": member,
        "role": f.get(Member.ROLE, DEFAULT_ROLE),
        "tier": f.get(Member.TIER),
        "enabled": f.get(Member.ENABLED, DEFAULT_ENABLED) != OFF,
    }


@routes.put("/admin/v1/orgs/{org}/members/{member}")
async def put_member(request: web.Request) -> web.Response:
    org, member = org_id(request), member_id(request)
    actor = await actor_for(request, org, change=True)
    doc = await json_object(request)
    only(doc, {"role", "tier", "enabled"})
    role = choice(doc, "role", ROLES)
    tier = string(doc, "tier")
    enabled = boolean(doc, "enabled", required=False, default=True)
    tiers = request.app[CONFIG].tiers
    if tier not in tiers:
        raise InvalidRequest(f"tier: unknown seat tier {tier!r} (configured: {', '.join(tiers)})")
    store = request.app[STORE]
    await org_or_404(store, org)
    primary_id = await store.primary_owner(org)
    fields = {
        Member.field(member, Member.TIER): tier or "",
        Member.field(member, Member.ROLE): role or DEFAULT_ROLE,
        Member.field(member, Member.ENABLED): flag(bool(enabled)),
    }
    # the guard makes the write fail if the primary owner changed since it was read
    primary = Member.PRIMARY
    guards = [f"={primary}={primary_id}"] if primary_id else [f"-{primary}"]
    if primary_id == member:
        if not enabled:
            raise Conflict(
                "enabled: the primary owner cannot be disabled; make another member "
                "primary_owner first"
            )
        if role != "primary_owner":
            raise Conflict(
                "role: this member is the primary owner; make another member primary_owner first"
            )
        if not actor.operator and actor.member != member:
            raise PermissionDenied(
                "only the operator or the primary owner may change the primary owner"
            )
    elif role == "primary_owner":
        if not (actor.operator or (primary_id and actor.member == primary_id)):
            raise PermissionDenied(
                "only the operator or the primary owner can name the primary owner"
            )
        fields[primary] = member
        if primary_id:  # the old primary owner stays an owner
            fields[Member.field(primary_id, Member.ROLE)] = "owner"
    try:
        result = await store.update(
            org, "members", actor=actor.name, action="member.put", fields=fields, guards=guards
        )
    except StoreRefusal as exc:
        raise Conflict("the member changed meanwhile; retry") from exc
    created = result["before"].get(Member.field(member, Member.TIER)) is None
    return web.json_response(
        member_view(
            org,
            member,
            {
                Member.ROLE: role or DEFAULT_ROLE,
                Member.TIER: tier or "",
                Member.ENABLED: fields[Member.field(member, Member.ENABLED)],
            },
        ),
        status=201 if created else 200,
    )


@routes.get("/admin/v1/orgs/{org}/members/{member}")
async def get_member(request: web.Request) -> web.Response:
    org, member = org_id(request), member_id(request)
    await actor_for(request, org)
    f = await request.app[STORE].member_fields(org, member, Member.VIEW)
    if Member.TIER not in f:
        raise NotFound(f"member {member!r} not found")
    return web.json_response(member_view(org, member, f))


@routes.delete("/admin/v1/orgs/{org}/members/{member}")
async def delete_member(request: web.Request) -> web.Response:
    """Disable the member, forget their role and revoke every credential of theirs: their
    generation moves on, and a credential of an older generation is dead in every process at
    once (admission and whois compare them), also if the member id is added again. Their
    usage history stays in the ledger."""
    org, member = org_id(request), member_id(request)
    actor = await actor_for(request, org, change=True)
    store = request.app[STORE]
    if await store.primary_owner(org) == member:
        raise Conflict("this member is the primary owner; make another member primary_owner first")
    gen = (await store.member_fields(org, member, (Member.GENERATION,))).get(Member.GENERATION)
    gen_field = Member.field(member, Member.GENERATION)
    # the guard: no other removal moved the generation meanwhile
    guard = f"={gen_field}={gen}" if gen is not None else f"-{gen_field}"
    try:
        await store.update(
            org,
            "members",
            actor=actor.name,
            action="member.delete",
            fields={
                Member.field(member, Member.ENABLED): OFF,
                Member.field(member, Member.ROLE): DEFAULT_ROLE,
                Member.field(member, Member.DELETED): ON,
                gen_field: str(int(gen or 0) + 1),
            },
            guards=[f"+{Member.field(member, Member.TIER)}", guard],
        )
    except StoreRefusal as exc:
        if exc.code == "conflict" or exc.code == "exists":
            raise Conflict("the member changed meanwhile; retry") from exc
        raise NotFound(f"member {member!r} not found") from exc
    return web.json_response({"org_id": org, "member_id": member, "deleted": True})


async def _issue(request: web.Request, kind: str, *, operator_only: bool) -> web.Response:
    org, member = org_id(request), member_id(request)
    actor = await actor_for(request, org, change=True, operator_only=operator_only)
    store = request.app[STORE]
    prefix = PROXY_KEY_PREFIX if kind == "k" else ADMIN_TOKEN_PREFIX
    secret = new_secret(prefix, org)
    cred_id = new_id("key" if kind == "k" else "tok")
    try:
        await store.credential(
            org,
            "add",
            kind,
            member=member,
            cred_id=cred_id,
            secret_hash=hash_secret(secret),
            actor=actor.name,
        )
    except StoreRefusal as exc:
        raise refusal_error(exc) from exc
    if kind == "k":
        return web.json_response(
            {"key_id": cred_id, "key": secret, "member_id": member}, status=201
        )
    return web.json_response(
        {"token_id": cred_id, "token": secret, "member_id": member}, status=201
    )


async def _revoke(request: web.Request, kind: str, *, operator_only: bool) -> web.Response:
    org, member = org_id(request), member_id(request)
    actor = await actor_for(request, org, change=True, operator_only=operator_only)
    cred_id = request.match_info["cred_id"]
    try:
        await request.app[STORE].credential(
            org, "revoke", kind, member=member, cred_id=cred_id, actor=actor.name
        )
    except StoreRefusal as exc:
        raise NotFound(f"{'key' if kind == 'k' else 'token'} {cred_id!r} not found") from exc
    return web.json_response({"id": cred_id, "revoked": True})


@routes.post("/admin/v1/orgs/{org}/members/{member}/keys")
async def issue_key(request: web.Request) -> web.Response:
    return await _issue(request, "k", operator_only=False)


@routes.delete("/admin/v1/orgs/{org}/members/{member}/keys/{cred_id}")
async def revoke_key(request: web.Request) -> web.Response:
    return await _revoke(request, "k", operator_only=False)


@routes.post("/admin/v1/orgs/{org}/members/{member}/admin-tokens")
async def issue_admin_token(request: web.Request) -> web.Response:
    return await _issue(request, "t", operator_only=True)


@routes.delete("/admin/v1/orgs/{org}/members/{member}/admin-tokens/{cred_id}")
async def revoke_admin_token(request: web.Request) -> web.Response:
    return await _revoke(request, "t", operator_only=True)
