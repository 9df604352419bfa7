"""Extra usage settings: the org's switches and monthly limit, auto-reload (Team), a seat
tier's and a member's limits (Enterprise), buying credit and confirming a reload (Team).

Every change is one audited write that binds the very next admission in every proxy
instance, because admission reads the settings in the same script that decides. A Team-only
setting on an Enterprise org, and the reverse, is refused (409) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.admin.actors import Actor, require
from proxy.admin.orgs import UNSET
from proxy.admin.writes import org_settings, refused, write
from proxy.core.errors import Conflict, InvalidRequest, NotFound
from proxy.core.money import format_usd, stored_usd
from proxy.core.vocabulary import Plan
from proxy.metering.payments import Payments
from proxy.storage.model import (
    DEFAULT_CONSENT,
    DEFAULT_REQUESTS_ON,
    DEFAULT_SCOPE,
    DELETE,
    OFF,
    ON,
    Guard,
    Member,
    Org,
    consent_of,
    flag,
)
from proxy.storage.store import Store


def settings_view(s: dict[str, str], tiers: list[str]) -> dict[str, Any]:
    plan = s.get(Org.PLAN)
    doc: dict[str, Any] = {
        "plan": plan,
        "enabled": s.get(Org.EU_ON) == ON,
        "member_consent": consent_of(s),
        "monthly_limit": stored_usd(s.get(Org.LIMIT)),
        "reservation_policy": s.get(Org.POLICY) or None,
        "period": s.get(Org.SPEND_PERIOD) or None,
    }
    if plan == Plan.TEAM:
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


async def get_settings(store: Store, actor: Actor, tiers: list[str], org: str) -> dict[str, Any]:
    require(actor, org)
    return settings_view(await org_settings(store, org), tiers)


@dataclass(frozen=True, slots=True)
class AutoReload:
    enabled: Any = UNSET  # bool
    threshold: Any = UNSET  # nano-USD
    amount: Any = UNSET  # nano-USD, more than 0


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """What an owner changes (``UNSET``: left as it is; a limit or policy of None: none)."""

    enabled: Any = UNSET
    member_scope: Any = UNSET
    member_consent: Any = UNSET
    monthly_limit: Any = UNSET
    auto_reload: AutoReload | None = None
    requests_enabled: Any = UNSET
    reservation_policy: Any = UNSET
    sent: tuple[str, ...] = field(default=())  # the settings named, for the plan's check


TEAM_ONLY = ("member_scope", "auto_reload")
ENTERPRISE_ONLY = ("requests_enabled",)


def _plan_allows(change: SettingsChange, plan: str) -> None:
    for name in TEAM_ONLY if plan == Plan.ENTERPRISE else ENTERPRISE_ONLY:
        if name in change.sent:
            other = Plan.NAMES[Plan.TEAM if plan == Plan.ENTERPRISE else Plan.ENTERPRISE]
            raise Conflict(
                f"{name}: only {other} organizations have this setting; this one is "
                f"on the {plan} plan"
            )


def _auto_reload(ar: AutoReload, current: dict[str, str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    if ar.enabled is not UNSET:
        fields[Org.AUTO_RELOAD_ON] = flag(ar.enabled)
    if ar.threshold is not UNSET:
        fields[Org.AUTO_RELOAD_THRESHOLD] = str(ar.threshold)
    if ar.amount is not UNSET:
        fields[Org.AUTO_RELOAD_AMOUNT] = str(ar.amount)

    def after(name: str) -> str | None:
        return fields.get(name, current.get(name))

    if after(Org.AUTO_RELOAD_ON) == ON and not after(Org.AUTO_RELOAD_AMOUNT):
        raise InvalidRequest("auto_reload.amount: required to enable auto-reload")
    if after(Org.AUTO_RELOAD_ON) == ON and not after(Org.AUTO_RELOAD_THRESHOLD):
        raise InvalidRequest("auto_reload.threshold: required to enable auto-reload")
    return fields


def _limit(value: int | None) -> str:
    return DELETE if value is None else str(value)


async def patch_settings(
    store: Store, actor: Actor, tiers: list[str], org: str, change: SettingsChange
) -> dict[str, Any]:
    require(actor, org, change=True)
    current = await org_settings(store, org)
    plan = current[Org.PLAN]
    _plan_allows(change, plan)
    fields: dict[str, str] = {}
    if change.enabled is not UNSET:
        fields[Org.EU_ON] = flag(change.enabled)
    if change.member_scope is not UNSET:
        fields[Org.SCOPE] = change.member_scope or DEFAULT_SCOPE
    if change.member_consent is not UNSET:
        fields[Org.CONSENT] = change.member_consent or DEFAULT_CONSENT[plan]
    if change.monthly_limit is not UNSET:
        fields[Org.LIMIT] = _limit(change.monthly_limit)
    if change.auto_reload is not None:
        fields.update(_auto_reload(change.auto_reload, current))
    if change.requests_enabled is not UNSET:
        fields[Org.REQUESTS_ON] = flag(change.requests_enabled)
    if change.reservation_policy is not UNSET:
        fields[Org.POLICY] = change.reservation_policy or DELETE
    if not fields:
        raise InvalidRequest("nothing to change: send at least one setting")
    await write(
        store,
        org,
        "org",
        actor=actor.name,
        action="extra_usage.update",
        fields=fields,
        guards=[Guard.equals(Org.PLAN, plan)],
        subject="the organization's plan",
    )
    return settings_view(await store.org_settings(org), tiers)


async def put_tier_limit(
    store: Store, actor: Actor, tiers: list[str], org: str, tier: str, limit: int | None
) -> dict[str, Any]:
    """Enterprise: the monthly limit of each member of a seat tier (None: unlimited)."""
    require(actor, org, change=True)
    if tier not in tiers:
        raise NotFound(f"seat tier {tier!r} not found (configured: {', '.join(tiers)})")
    s = await org_settings(store, org)
    if s[Org.PLAN] != Plan.ENTERPRISE:
        raise Conflict(
            "seat-tier spend limits: only Enterprise organizations have them; "
            "this one is on the team plan"
        )
    await write(
        store,
        org,
        "org",
        actor=actor.name,
        action="extra_usage.tier_limit",
        fields={Org.tier_limit(tier): _limit(limit)},
        guards=[Guard.equals(Org.PLAN, Plan.ENTERPRISE)],
        subject="the organization's plan",
    )
    return {"tier": tier, "monthly_limit": None if limit is None else format_usd(limit)}


async def put_member_setting(
    store: Store,
    actor: Actor,
    org: str,
    member: str,
    *,
    enabled: Any = UNSET,
    limit: Any = UNSET,
) -> dict[str, Any]:
    """Team, selected scope: extra usage on or off for a member (``enabled``); Enterprise: the
    member's monthly limit (``limit``, None: unlimited, 0: off)."""
    require(actor, org, change=True)
    s = await org_settings(store, org)
    out: dict[str, Any] = {"member_id": member}
    if s[Org.PLAN] == Plan.TEAM:
        if limit is not UNSET:
            raise Conflict("monthly_limit: per-member limits are an Enterprise setting")
        if enabled is UNSET:
            raise InvalidRequest("enabled: field required")
        fields = {Member.field(member, Member.EU): flag(enabled)}
        out["enabled"] = bool(enabled)
    else:
        if enabled is not UNSET:
            raise Conflict(
                "enabled: on Enterprise every member has extra usage unless their "
                "monthly_limit is 0"
            )
        if limit is UNSET:
            raise InvalidRequest(
                'monthly_limit: field required (an amount such as "500.00", or null for unlimited)'
            )
        fields = {Member.field(member, Member.LIMIT): _limit(limit)}
        out["monthly_limit"] = None if limit is None else format_usd(limit)
    await write(
        store,
        org,
        "members",
        actor=actor.name,
        action="extra_usage.member",
        fields=fields,
        guards=[Guard.exists(Member.field(member, Member.TIER))],
        subject=f"member {member!r}",
    )
    return out


async def purchase(
    store: Store, actor: Actor, org: str, *, amount: int, key: str, ahead: bool
) -> tuple[dict[str, Any], bool]:
    """Team: buy credit, idempotent by ``key``: (the purchase, whether it was a replay)."""
    require(actor, org, change=True)
    settings = await org_settings(store, org)
    if settings.get(Org.PLAN) == Plan.TEAM and settings.get(Org.EU_ON) != ON and not ahead:
        # credit bought while extra usage is off waits unused: only when the owner says so
        raise Conflict(
            "extra usage is off for this organization: credit bought now is not used until "
            'it is turned on; send "buy_ahead": true to buy it ahead anyway'
        )
    with refused(org=org):
        result = await store.purchase(org, key, amount, actor.name)
    replay = result.get("replay") == "1"
    return {
        "amount": format_usd(int(result["amount"])),
        "balance": format_usd(int(result["balance"])),
        "idempotency_key": key,
        "replay": replay,
    }, replay


async def confirm_reload(
    payments: Payments, actor: Actor, org: str, reload_id: str
) -> dict[str, Any]:
    """The payment provider confirms a reload (the operator): the balance rises, once."""
    require(actor, org, operator_only=True)
    with refused(org=org, subject=f"reload {reload_id!r}"):
        result = await payments.confirm(org, reload_id, actor.name)
    return {
        "reload_id": reload_id,
        "amount": format_usd(int(result["amount"])),
        "balance": format_usd(int(result["balance"])),
        "replay": result.get("replay") == "1",
    }
