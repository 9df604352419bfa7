"""Extra usage requests (Enterprise): a member who hit their limit asks for more; owners list
them, approve (which raises the member's monthly limit, and the tier's or the org's when
the owner says so) or dismiss them. The feature can be switched off per organization."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.admin.actors import Actor, require
from proxy.admin.states import MEMBER_STATE_FIELDS, member_state, org_state
from proxy.admin.writes import org_settings, refused, write
from proxy.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from proxy.core.limits import BALANCE, ORG_LIMIT, ORG_OFF, TIER_LIMIT, plan_grant
from proxy.core.money import format_usd, stored_usd
from proxy.core.statements import current_period
from proxy.core.vocabulary import Plan, RequestState
from proxy.storage.model import DEFAULT_REQUESTS_ON, OFF, Guard, Member, Org
from proxy.storage.store import Store


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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _all(store: Store, org: str) -> list[dict[str, Any]]:
    raw = await store.hash_fields(org, "requests")
    return sorted((orjson.loads(v) for v in raw.values()), key=lambda r: r["created"])


async def ask(
    store: Store,
    actor: Actor,
    *,
    amount: int | None,
    message: str | None,
    announce: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], bool]:
    """A member asks for more (their own request): (the request, whether it is new), a new
    one announced (``announce``: the notification webhook). One pending request each:
    asking again answers the pending one."""
    org, member = actor.org or "", actor.member or ""
    settings = await org_settings(store, org)
    if settings[Org.PLAN] != Plan.ENTERPRISE:
        raise Conflict(
            "extra usage requests are an Enterprise feature; on Team an owner "
            "buys credit or raises the monthly limit"
        )
    if settings.get(Org.REQUESTS_ON, DEFAULT_REQUESTS_ON) == OFF:
        raise PermissionDenied(
            "your organization does not take extra usage requests; ask an owner directly"
        )
    for r in await _all(store, org):
        if r["member"] == member and r["state"] == RequestState.PENDING:
            return view(r), False
    rid = f"eur_{secrets.token_hex(6)}"
    record = {
        "id": rid,
        "member": member,
        "state": RequestState.PENDING,
        "amount": str(amount) if amount else "",
        "message": message,
        "created": _now(),
    }
    await write(
        store,
        org,
        "requests",
        actor=actor.name,
        action="extra_usage_request.create",
        fields={rid: orjson.dumps(record).decode()},
        guards=[Guard.absent(rid)],
        subject=f"extra usage request {rid!r}",
    )
    if announce is not None:
        announce({"type": "extra_usage.request_created", "org_id": org, **view(record)})
    return view(record), True


async def mine(store: Store, actor: Actor) -> dict[str, Any]:
    """A member's own requests, newest first (the usage page shows their state)."""
    rows = [view(r) for r in await _all(store, actor.org or "") if r["member"] == actor.member]
    return {"member_id": actor.member, "requests": rows[::-1]}


async def list_requests(store: Store, actor: Actor, org: str, state: str | None) -> dict[str, Any]:
    require(actor, org)
    rows = [view(r) for r in await _all(store, org) if state is None or r["state"] == state]
    return {"org_id": org, "requests": rows}


@dataclass(frozen=True, slots=True)
class Approval:
    amount: int | None = None  # how much more the member may spend (None: what they asked)
    raise_tier: bool = False  # raise the tier's limit too, when it would stop them
    raise_org: bool = False  # raise the org's limit too, likewise


async def decide(
    store: Store, actor: Actor, org: str, rid: str, decision: str, approval: Approval
) -> dict[str, Any]:
    """Approve (``RequestState.APPROVED``, with ``approval``) or dismiss a pending request;
    deciding it again the same way answers the decision made."""
    require(actor, org, change=True)
    raw = (await store.hash_fields(org, "requests")).get(rid)
    if raw is None:
        raise NotFound(f"extra usage request {rid!r} not found")
    record = orjson.loads(raw)
    if record["state"] != RequestState.PENDING:
        if record["state"] == decision:
            return view(record)  # replayed decision
        raise Conflict(f"this request was already {record['state']}")
    changes = Changes()
    if decision == RequestState.APPROVED:
        changes = await _grant(store, org, record, approval)
        record.update(changes.recorded)
    record.update(state=decision, decided_by=actor.name, decided_at=_now())
    with refused(org=org, member=record["member"], subject="the request"):
        # the record and the limits in one step: of two decisions, exactly one has effect
        await store.decide(
            org,
            rid,
            actor=actor.name,
            action=f"extra_usage_request.{decision}",
            expected=raw,
            record=orjson.dumps(record).decode(),
            member=record["member"] if changes.member_fields else "",
            org_fields=changes.org_fields,
            member_fields=changes.member_fields,
        )
    return view(record)


@dataclass
class Changes:
    """What an approval writes: the org's and the member's limit fields, and what the
    request's record keeps of it."""

    org_fields: dict[str, str] = field(default_factory=dict)
    member_fields: dict[str, str] = field(default_factory=dict)
    recorded: dict[str, str] = field(default_factory=dict)


BLOCKED = {
    TIER_LIMIT: "the {tier} seat-tier limit ({limit}) would still stop them first: approve "
    'with "raise_tier_limit": true to raise it for every {tier} member, or raise it yourself',
    ORG_LIMIT: "the organization's monthly limit ({limit}) would still stop them first: "
    'approve with "raise_org_limit": true to raise it, or raise it yourself',
    ORG_OFF: "extra usage is off for the organization: turn it on first",
    BALANCE: "the prepaid balance would still stop them first: buy credit first",
}


async def _grant(store: Store, org: str, record: dict[str, Any], approval: Approval) -> Changes:
    """Approve: the member may spend the amount more this month (the amount asked for unless
    the owner names another), their own limit raised by what it takes, and the tier's or the
    org's limit too when the owner says so; refused (409, nothing written) when another limit
    would still stop them, so that "approved" always means they can spend more."""
    if approval.amount is not None:
        grant = approval.amount
    elif record.get("amount"):
        grant = int(record["amount"])
    else:
        raise InvalidRequest(
            "amount: required, the request names no amount: how much more the member may "
            'spend this month, such as "50.00"'
        )
    member = record["member"]
    settings = await org_settings(store, org)
    fields = await store.member_fields(org, member, MEMBER_STATE_FIELDS)
    if Member.TIER not in fields:
        raise NotFound(f"member {member!r} is no longer in the organization")
    tier = fields[Member.TIER]
    period = current_period(time.time())
    plan = plan_grant(
        org_state(settings, period),
        member_state(settings, fields, tier, period),
        grant,
        raise_tier=approval.raise_tier,
        raise_org=approval.raise_org,
    )
    if plan.blocked:
        limit = settings.get(Org.tier_limit(tier) if plan.blocked == TIER_LIMIT else Org.LIMIT)
        why = BLOCKED[plan.blocked].format(
            tier=tier.title(), limit=f"${format_usd(int(limit))}" if limit else ""
        )
        raise Conflict(f"approving ${format_usd(grant)} would not let {member} spend more: {why}")
    out = Changes(recorded={"granted": str(grant)})
    if plan.tier_limit is not None:
        out.org_fields[Org.tier_limit(tier)] = str(plan.tier_limit)
    if plan.org_limit is not None:
        out.org_fields[Org.LIMIT] = str(plan.org_limit)
    if plan.member_limit is not None:
        out.member_fields[Member.field(member, Member.LIMIT)] = str(plan.member_limit)
    for name, value in (
        ("new_limit", plan.member_limit),
        ("new_tier_limit", plan.tier_limit),
        ("new_org_limit", plan.org_limit),
    ):
        if value is not None:
            out.recorded[name] = str(value)
    return out
