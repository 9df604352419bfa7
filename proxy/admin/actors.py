"""Who acts on the administration layer, and what they may do (SPEC §4.3): the operator
provisions everything; the primary owner and owners change their own org; an admin reads it;
a member gets 403; no one reaches another organization (404, as if it did not exist)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.errors import NotFound, PermissionDenied
from proxy.core.vocabulary import Role


@dataclass(frozen=True, slots=True)
class Actor:
    """The operator, or a member with a role in one org."""

    name: str  # "operator" | "member:<id>", as the audit log records it
    role: str  # Role.OPERATOR or a member's role
    org: str | None = None
    member: str | None = None

    @property
    def operator(self) -> bool:
        return self.role == Role.OPERATOR

    def can_read(self, org: str) -> bool:
        return self.operator or (self.org == org and self.role in Role.MAY_READ)

    def can_change(self, org: str) -> bool:
        return self.operator or (self.org == org and self.role in Role.MAY_CHANGE)


OPERATOR = Actor(Role.OPERATOR, Role.OPERATOR)


def member_actor(org: str, member: str, role: str) -> Actor:
    return Actor(f"member:{member}", role, org, member)


def require(
    actor: Actor, org: str | None = None, *, change: bool = False, operator_only: bool = False
) -> None:
    """Raise unless ``actor`` may read (or ``change``) ``org``: 403 for a role that may not,
    404 for another org's member (its existence is not theirs to learn)."""
    if operator_only and not actor.operator:
        raise PermissionDenied("only the operator may do this")
    if org is None:
        return
    if actor.can_change(org) if change else actor.can_read(org):
        return
    if actor.org != org and not actor.operator:
        raise NotFound(f"organization {org!r} not found")
    raise PermissionDenied(
        f"role {actor.role!r} may not {'change' if change else 'read'} these settings"
    )
