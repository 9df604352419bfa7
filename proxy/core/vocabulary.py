"""The product's words, each declared once with its kind. Pure.

Plans, roles, scopes, consent modes, reservation policies, decisions, modes, seat windows,
the reasons extra usage is not available, the codes a script refuses with, the states of an
extra usage request: every layer takes them from here (the data model in ``proxy.storage``,
the scripts' prelude, the rules in ``proxy.core``, the administration layer, the handlers),
and the pages from the table ``page_table`` builds (served as ``/admin/vocabulary.js``).
``tests/unit/test_vocabulary.py`` fails on a Python module that spells one of these words as
a literal instead, as ``tests/unit/test_scripts.py`` fails on a Lua script that spells a word
not declared.

Each kind is a class: its words as constants, ``ALL`` the tuple of them in their order.
"""

from __future__ import annotations

from typing import Any, Final


class Plan:
    TEAM: Final = "team"
    ENTERPRISE: Final = "enterprise"
    ALL: Final = (TEAM, ENTERPRISE)
    NAMES: Final = {TEAM: "Team", ENTERPRISE: "Enterprise"}


class Role:
    """A member's role in their org; the operator is the actor of the operator token."""

    PRIMARY_OWNER: Final = "primary_owner"
    OWNER: Final = "owner"
    ADMIN: Final = "admin"
    MEMBER: Final = "member"
    ALL: Final = (PRIMARY_OWNER, OWNER, ADMIN, MEMBER)
    OPERATOR: Final = "operator"
    MAY_CHANGE: Final = frozenset({PRIMARY_OWNER, OWNER})  # the org's settings and members
    MAY_READ: Final = frozenset({PRIMARY_OWNER, OWNER, ADMIN})


class Scope:
    """Team: who may use extra usage."""

    ALL_MEMBERS: Final = "all"
    SELECTED: Final = "selected"
    ALL: Final = (ALL_MEMBERS, SELECTED)


class Consent:
    """Whether a member must accept continuing on extra usage."""

    AUTOMATIC: Final = "automatic"
    REQUIRED: Final = "required"
    ALL: Final = (AUTOMATIC, REQUIRED)


class Policy:
    """The reservation policy (SPEC §3)."""

    STRICT: Final = "strict"
    ESTIMATE: Final = "estimate"
    NONE: Final = "none"
    ALL: Final = (STRICT, ESTIMATE, NONE)


class Decision:
    ALLOW: Final = "allow"
    DENY: Final = "deny"
    ALL: Final = (ALLOW, DENY)


class Mode:
    """What a request runs on."""

    INCLUDED: Final = "included"
    EXTRA_USAGE: Final = "extra_usage"
    ALL: Final = (INCLUDED, EXTRA_USAGE)
    LIMITED: Final = "limited"  # a status only: neither is available now


class Claim:
    """The seat windows, as the unified headers name them; ``OVERAGE``: extra usage."""

    FIVE_HOUR: Final = "five_hour"
    SEVEN_DAY: Final = "seven_day"
    ALL: Final = (FIVE_HOUR, SEVEN_DAY)
    OVERAGE: Final = "overage"


class Reason:
    """Why extra usage is not available (the unified headers' overage-disabled-reason, a
    denial's reason, the rule that binds a spend): the conditions first, then the limits in
    the order admission tests them. ``UNLIMITED`` is a binding only: nothing limits it."""

    ORG_OFF: Final = "org_level_disabled"
    MEMBER_OFF: Final = "member_level_disabled"
    CONSENT: Final = "consent_required"
    MEMBER_LIMIT: Final = "member_spend_limit"
    TIER_LIMIT: Final = "seat_tier_spend_limit"
    ORG_LIMIT: Final = "org_spend_limit"
    BALANCE: Final = "out_of_credits"
    ALL: Final = (ORG_OFF, MEMBER_OFF, CONSENT, MEMBER_LIMIT, TIER_LIMIT, ORG_LIMIT, BALANCE)
    SPEND_LIMITS: Final = (MEMBER_LIMIT, TIER_LIMIT, ORG_LIMIT)
    BILLING: Final = frozenset((*SPEND_LIMITS, BALANCE))  # a 429 billing_error
    UNLIMITED: Final = "unlimited"
    RULES: Final = (ORG_OFF, MEMBER_OFF, MEMBER_LIMIT, TIER_LIMIT, ORG_LIMIT, BALANCE, UNLIMITED)


class Refusal:
    """What a script answers when it refuses (``{"ok": 0, "err": <code>, ...}``), by kind."""

    # about the caller: who they are, or whether they may act
    UNKNOWN_ORG: Final = "unknown_org"
    ORG_DISABLED: Final = "org_disabled"
    UNKNOWN_KEY: Final = "unknown_key"
    UNKNOWN_MEMBER: Final = "unknown_member"
    MEMBER_DISABLED: Final = "member_disabled"
    UNKNOWN_CREDENTIAL: Final = "unknown_credential"
    IDENTITY: Final = (
        UNKNOWN_ORG,
        ORG_DISABLED,
        UNKNOWN_KEY,
        UNKNOWN_MEMBER,
        MEMBER_DISABLED,
        UNKNOWN_CREDENTIAL,
    )
    # about a request or reservation
    UNKNOWN_TIER: Final = "unknown_tier"  # a member's tier the proxy has no config for
    DUPLICATE_ID: Final = "duplicate_id"  # admit: the request id was settled or released
    REQUEST_ID_TAKEN: Final = "request_id_taken"  # admit: another member's check API id
    UNBOUNDED_SERVER_TOOL: Final = "unbounded_server_tool"  # strict, web search w/o max_uses
    UNKNOWN_RESERVATION: Final = "unknown_reservation"
    RELEASED: Final = "released"  # settle: the reservation was released
    SETTLED: Final = "settled"  # release: the reservation was settled
    REQUEST: Final = (
        UNKNOWN_TIER,
        DUPLICATE_ID,
        REQUEST_ID_TAKEN,
        UNBOUNDED_SERVER_TOOL,
        UNKNOWN_RESERVATION,
        RELEASED,
        SETTLED,
    )
    # about money coming in
    NOT_TEAM: Final = "not_team"  # purchase: only Team has credit
    IDEMPOTENCY_CONFLICT: Final = "idempotency_conflict"  # the key, with another amount
    UNKNOWN_RELOAD: Final = "unknown_reload"
    CREDIT: Final = (NOT_TEAM, IDEMPOTENCY_CONFLICT, UNKNOWN_RELOAD)
    # an administrative write's guards (write.lua), and a taken credential id
    NOT_FOUND: Final = "not_found"  # a "+field" guard
    EXISTS: Final = "exists"  # a "-field" guard
    CONFLICT: Final = "conflict"  # a "=field=value" guard
    GUARD: Final = (NOT_FOUND, EXISTS, CONFLICT)
    # the store: a reply it cannot read (never a script's own)
    UNREADABLE: Final = "unreadable_reply"
    ALL: Final = (*IDENTITY, *REQUEST, *CREDIT, *GUARD)


class RequestState:
    """An extra usage request's state (Enterprise)."""

    PENDING: Final = "pending"
    APPROVED: Final = "approved"
    DISMISSED: Final = "dismissed"
    ALL: Final = (PENDING, APPROVED, DISMISSED)


# -- the words people read ---------------------------------------------------------------
# What each reason is called where it is shown: ``limit`` in a refusal ("monthly member spend
# limit reached"), ``member`` on the member's own usage page, ``owner`` on the admin page
# beside a member's spend ("{tier}": the member's seat tier).
REASON_WORDS: Final[dict[str, dict[str, str]]] = {
    Reason.ORG_OFF: {
        "member": "Extra usage is off for your organization; an owner can turn it on.",
        "owner": "extra usage is off for the organization",
    },
    Reason.MEMBER_OFF: {
        "member": "Extra usage is not enabled for you.",
        "owner": "extra usage is off for this member",
    },
    Reason.CONSENT: {
        "member": "You can continue on extra usage, billed at API prices, once you accept.",
        "owner": "waiting for the member to accept extra usage",
    },
    Reason.MEMBER_LIMIT: {
        "limit": "monthly member spend limit",
        "member": "Your monthly spend limit is reached.",
        "owner": "their own limit",
    },
    Reason.TIER_LIMIT: {
        "limit": "monthly seat-tier spend limit",
        "member": "Your seat tier's monthly spend limit is reached.",
        "owner": "{tier} tier limit",
    },
    Reason.ORG_LIMIT: {
        "limit": "monthly organization spend limit",
        "member": "Your organization's monthly spend limit is reached.",
        "owner": "the organization's limit",
    },
    Reason.BALANCE: {
        "limit": "prepaid extra usage balance",
        "member": "Your organization's prepaid credit is used up.",
        "owner": "the prepaid balance",
    },
    Reason.UNLIMITED: {"owner": "no limit"},
}


def limit_name(reason: str) -> str:
    """A spend limit's name in a refusal: ``monthly member spend limit``."""
    return REASON_WORDS[reason]["limit"]


def page_table() -> dict[str, Any]:
    """The vocabulary as the pages read it (``/admin/vocabulary.js``): every kind's words,
    and the words people read."""
    kinds = (Plan, Role, Scope, Consent, Policy, Decision, Mode, Claim, Reason, RequestState)
    table: dict[str, Any] = {
        kind.__name__: {
            name: value
            for name, value in vars(kind).items()
            if name.isupper() and isinstance(value, str | tuple)
        }
        for kind in kinds
    }
    table["Role"]["MAY_CHANGE"] = sorted(Role.MAY_CHANGE)
    table["Role"]["MAY_READ"] = sorted(Role.MAY_READ)
    table["PLAN_NAMES"] = dict(Plan.NAMES)
    table["REASON_WORDS"] = REASON_WORDS
    return table


def words() -> frozenset[str]:
    """Every word declared here (what the scripts may spell, and the Python may not)."""
    found: set[str] = set()
    kinds = (Plan, Role, Scope, Consent, Policy, Decision, Mode, Claim, Reason, Refusal)
    for kind in (*kinds, RequestState):
        for name, value in vars(kind).items():
            if not name.isupper():
                continue
            if isinstance(value, str):
                found.add(value)
            elif isinstance(value, tuple | frozenset):
                found |= {v for v in value if isinstance(v, str)}
    return frozenset(found)
