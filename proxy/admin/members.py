"""Members and their credentials: add or change a member (with the primary owner's rules),
read, remove; issue and revoke proxy keys and admin tokens; a member's own consent to extra
usage."""

from __future__ import annotations

from typing import Any

from proxy.admin.actors import Actor, require
from proxy.admin.writes import org_settings, refused, write
from proxy.core.credentials import (
    ADMIN_TOKEN_PREFIX,
    PROXY_KEY_PREFIX,
    hash_secret,
    new_id,
    new_secret,
)
from proxy.core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from proxy.core.vocabulary import Role
from proxy.storage.model import (
    DEFAULT_ENABLED,
    DEFAULT_ROLE,
    OFF,
    ON,
    Cred,
    Guard,
    Member,
    flag,
)
from proxy.storage.store import Store


def member_view(org: str, member: str, f: dict[str, str]) -> dict[str, Any]:
    return {
        "org_id": org,
        "member_id": member,
        "role": f.get(Member.ROLE, DEFAULT_ROLE),
        "tier": f.get(Member.TIER),
        "enabled": f.get(Member.ENABLED, DEFAULT_ENABLED) != OFF,
    }


def _primary_rules(
    actor: Actor, member: str, primary: str | None, role: str, enabled: bool
) -> None:
    """The primary owner's rules: exactly one; only the operator or the primary owner names
    another, and the one there is stays enabled and primary until another is named."""
    if primary == member:
        if not enabled:
            raise Conflict(
                "enabled: the primary owner cannot be disabled; make another member "
                "primary_owner first"
            )
        if role != Role.PRIMARY_OWNER:
            raise Conflict(
                "role: this member is the primary owner; make another member primary_owner first"
            )
        if not actor.operator and actor.member != member:
            raise PermissionDenied(
                "only the operator or the primary owner may change the primary owner"
            )
    elif role == Role.PRIMARY_OWNER and not (
        actor.operator or (primary and actor.member == primary)
    ):
        raise PermissionDenied("only the operator or the primary owner can name the primary owner")


async def put_member(
    store: Store,
    actor: Actor,
    tiers: list[str],
    org: str,
    member: str,
    *,
    role: str,
    tier: str,
    enabled: bool,
) -> tuple[dict[str, Any], bool]:
    """Add or change a member: (its view, whether it was created)."""
    require(actor, org, change=True)
    if tier not in tiers:
        raise InvalidRequest(f"tier: unknown seat tier {tier!r} (configured: {', '.join(tiers)})")
    await org_settings(store, org)
    primary = await store.primary_owner(org)
    _primary_rules(actor, member, primary, role, enabled)
    fields = {
        Member.field(member, Member.TIER): tier,
        Member.field(member, Member.ROLE): role,
        Member.field(member, Member.ENABLED): flag(enabled),
    }
    if role == Role.PRIMARY_OWNER and primary != member:
        fields[Member.PRIMARY] = member
        if primary:  # the old primary owner stays an owner
            fields[Member.field(primary, Member.ROLE)] = Role.OWNER
    # the guard makes the write fail if the primary owner changed since it was read
    guard = Guard.equals(Member.PRIMARY, primary) if primary else Guard.absent(Member.PRIMARY)
    result = await write(
        store,
        org,
        "members",
        actor=actor.name,
        action="member.put",
        fields=fields,
        guards=[guard],
        subject="the member",
        meanwhile=True,
    )
    created = result["before"].get(Member.field(member, Member.TIER)) is None
    view = {Member.ROLE: role, Member.TIER: tier, Member.ENABLED: flag(enabled)}
    return member_view(org, member, view), created


async def get_member(store: Store, actor: Actor, org: str, member: str) -> dict[str, Any]:
    require(actor, org)
    f = await store.member_fields(org, member, Member.VIEW)
    if Member.TIER not in f:
        raise NotFound(f"member {member!r} not found")
    return member_view(org, member, f)


async def delete_member(store: Store, actor: Actor, org: str, member: str) -> dict[str, Any]:
    """Disable the member, forget their role and revoke every credential of theirs: their
    generation moves on, and a credential of an older generation is dead in every process at
    once (admission and whois compare them), also if the member id is added again. Their
    usage history stays in the ledger."""
    require(actor, org, change=True)
    if await store.primary_owner(org) == member:
        raise Conflict("this member is the primary owner; make another member primary_owner first")
    gen = (await store.member_fields(org, member, (Member.GENERATION,))).get(Member.GENERATION)
    gen_field = Member.field(member, Member.GENERATION)
    # the guard: no other removal moved the generation meanwhile
    moved = Guard.equals(gen_field, gen) if gen is not None else Guard.absent(gen_field)
    await write(
        store,
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
        guards=[Guard.exists(Member.field(member, Member.TIER)), moved],
        subject=f"member {member!r}",
        meanwhile=True,
    )
    return {"org_id": org, "member_id": member, "deleted": True}


CREDENTIALS = {
    Cred.PROXY_KEY: (PROXY_KEY_PREFIX, "key", "key"),
    Cred.ADMIN_TOKEN: (ADMIN_TOKEN_PREFIX, "tok", "token"),
}
CREDENTIAL_KINDS = (Cred.PROXY_KEY, Cred.ADMIN_TOKEN)  # a proxy key, an admin token


async def issue(store: Store, actor: Actor, org: str, member: str, kind: str) -> tuple[str, str]:
    """A new proxy key (``Cred.PROXY_KEY``, an owner may) or admin token (the operator):
    (its id, the secret, shown once and stored only as a hash)."""
    prefix, id_prefix, _ = CREDENTIALS[kind]
    require(actor, org, change=True, operator_only=kind == Cred.ADMIN_TOKEN)
    secret = new_secret(prefix, org)
    cred_id = new_id(id_prefix)
    with refused(org=org, member=member, subject=f"credential {cred_id!r}"):
        await store.credential(
            org,
            Cred.ADD,
            kind,
            member=member,
            cred_id=cred_id,
            secret_hash=hash_secret(secret),
            actor=actor.name,
        )
    return cred_id, secret


async def revoke(
    store: Store, actor: Actor, org: str, member: str, kind: str, cred_id: str
) -> dict[str, Any]:
    require(actor, org, change=True, operator_only=kind == Cred.ADMIN_TOKEN)
    with refused(org=org, member=member, subject=f"{CREDENTIALS[kind][2]} {cred_id!r}"):
        await store.credential(
            org, Cred.REVOKE, kind, member=member, cred_id=cred_id, actor=actor.name
        )
    return {"id": cred_id, "revoked": True}


async def consent(store: Store, actor: Actor, accept: bool) -> dict[str, Any]:
    """The member accepts (or withdraws) continuing on extra usage: their own setting."""
    org, member = actor.org or "", actor.member or ""
    await write(
        store,
        org,
        "members",
        actor=actor.name,
        action="extra_usage.consent" if accept else "extra_usage.withdraw",
        fields={Member.field(member, Member.CONSENT): flag(accept)},
        guards=[Guard.exists(Member.field(member, Member.TIER))],
        subject=f"member {member!r}",
    )
    return {"member_id": member, "accepted": accept}
