"""What binds: the effective extra-usage limit of an org and of each member this month, and
which rule it is — the same rules, in the same order, as admission (``lua/admit.lua``:
``eu_condition`` then ``limit_room`` per limit), for the admin views. Pure.

A member's spend runs against the lowest room left under every limit that applies to them:
their own monthly limit and their seat tier's (Enterprise), the org's monthly limit, and on
Team the prepaid balance. Room is ``limit - spend - reserved`` (what requests in flight hold);
the least room is the rule that binds, and the effective limit what the month-to-date spend
can reach under it (spend + room).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.vocabulary import Plan, Reason

# the rules, as the vocabulary names them
ORG_OFF = Reason.ORG_OFF
MEMBER_OFF = Reason.MEMBER_OFF
MEMBER_LIMIT = Reason.MEMBER_LIMIT
TIER_LIMIT = Reason.TIER_LIMIT
ORG_LIMIT = Reason.ORG_LIMIT
BALANCE = Reason.BALANCE
UNLIMITED = Reason.UNLIMITED
RULES = Reason.RULES


@dataclass(frozen=True, slots=True)
class Binding:
    """The rule that limits a spend now, in nano-USD."""

    rule: str  # one of RULES
    spend: int  # month to date, against which the limit is shown
    effective_limit: int | None  # what the spend can reach this month (None: unlimited)
    remaining: int | None  # room left (None: unlimited; 0 when off)

    @property
    def reached(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


@dataclass(frozen=True, slots=True)
class OrgState:
    """What the org's limits are made of (nano-USD; None: no such limit)."""

    plan: str
    enabled: bool  # extra usage on for the org
    spend: int  # the org's month-to-date extra usage
    reserved: int  # held by requests in flight
    limit: int | None  # the org's monthly limit
    balance: int | None  # Team: prepaid credit


@dataclass(frozen=True, slots=True)
class MemberState:
    enabled: bool  # extra usage on for the member (Team "selected" scope; else True)
    spend: int
    reserved: int
    limit: int | None  # Enterprise: their own monthly limit ("0": off)
    tier_limit: int | None  # Enterprise: their seat tier's


def _lowest(spend: int, rooms: list[tuple[str, int]], own: tuple[str, ...]) -> Binding:
    """The least room of ``rooms`` (the first of equal ones, in rule order). The effective
    limit of a rule that is the subject's own (``own``: a member's or tier's limit for a
    member, the org's for the org) is its limit less what is held, even once passed; under
    another's (the org's limit, for a member) it is what the spend can still reach."""
    if not rooms:
        return Binding(UNLIMITED, spend, None, None)
    rule, room = min(rooms, key=lambda r: r[1])
    effective = spend + room if rule in own else spend + max(room, 0)
    return Binding(rule, spend, max(effective, 0), room)


def org_rooms(org: OrgState) -> list[tuple[str, int]]:
    """Room under each org-wide rule: its monthly limit, and on Team the balance."""
    rooms = []
    if org.limit is not None:
        rooms.append((ORG_LIMIT, org.limit - org.spend - org.reserved))
    if org.plan == Plan.TEAM:
        rooms.append((BALANCE, (org.balance or 0) - org.reserved))
    return rooms


def org_binding(org: OrgState) -> Binding:
    """What limits the org's extra usage as a whole."""
    if not org.enabled:
        return Binding(ORG_OFF, org.spend, org.spend, 0)
    return _lowest(org.spend, org_rooms(org), (ORG_LIMIT, BALANCE))


def member_binding(org: OrgState, member: MemberState) -> Binding:
    """What limits one member's extra usage: the conditions first, then the lowest room."""
    if not org.enabled:
        return Binding(ORG_OFF, member.spend, member.spend, 0)
    if not member.enabled or (org.plan == Plan.ENTERPRISE and member.limit == 0):
        return Binding(MEMBER_OFF, member.spend, member.spend, 0)
    rooms: list[tuple[str, int]] = []
    if org.plan == Plan.ENTERPRISE:
        if member.limit is not None:
            rooms.append((MEMBER_LIMIT, member.limit - member.spend - member.reserved))
        if member.tier_limit is not None:
            rooms.append((TIER_LIMIT, member.tier_limit - member.spend - member.reserved))
    rooms += org_rooms(org)
    return _lowest(member.spend, rooms, (MEMBER_LIMIT, TIER_LIMIT))


@dataclass(frozen=True, slots=True)
class Grant:
    """What approving ``amount`` more for a member changes (nano-USD; None: unchanged), or
    why it cannot (``blocked``: the rule that would still stop the member)."""

    member_limit: int | None = None
    tier_limit: int | None = None
    org_limit: int | None = None
    blocked: str = ""  # a rule of RULES, "" when the grant takes effect
    unlimited: bool = False  # nothing limits the member: nothing to change


def plan_grant(
    org: OrgState, member: MemberState, amount: int, *, raise_tier: bool, raise_org: bool
) -> Grant:
    """Let a member spend ``amount`` more this month than they can now: their own limit
    raised by what it takes, and the tier's or the org's too when one of those would still
    stop them first — only when the owner said so (``raise_tier`` / ``raise_org``), else the
    grant is ``blocked`` by that rule and nothing changes. Extra usage off for the org blocks
    it; off for the member (an own limit of 0) is what the raise of their limit turns on."""
    if not org.enabled:
        return Grant(blocked=ORG_OFF)
    now = member_binding(org, member)
    if now.rule == UNLIMITED:
        return Grant(unlimited=True)
    room_now = 0 if now.rule == MEMBER_OFF else max(now.remaining or 0, 0)
    want = room_now + amount  # the room the member must have once approved
    used = member.spend + member.reserved
    own = tier = org_limit = None
    if member.limit is not None and member.limit - used < want:
        own = used + want
    if member.tier_limit is not None and member.tier_limit - used < want:
        if not raise_tier:
            return Grant(blocked=TIER_LIMIT)
        tier = used + want
    if org.limit is not None and org.limit - org.spend - org.reserved < want:
        if not raise_org:
            return Grant(blocked=ORG_LIMIT)
        org_limit = org.spend + org.reserved + want
    if org.plan == Plan.TEAM and (org.balance or 0) - org.reserved < want:
        return Grant(blocked=BALANCE)
    return Grant(member_limit=own, tier_limit=tier, org_limit=org_limit)
