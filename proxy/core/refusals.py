"""One table from a script's refusal to the error a client sees, per context. Pure.

A script refuses with a code (``Refusal``); what that means to the caller depends on who
asked: an unknown member is a 401 to a proxy key (its key is dead), a 404 to the check API
(it named a member that is not there) and a 404 to an owner. ``refusal_error`` looks the
code up in its context's table and fills the message with the names the caller knows (the
org, the member, the id in the path, ``subject``: what an administrative write was about).
A code a context does not expect is an ``InternalError`` that names it: a contract broken,
never a guess.
"""

from __future__ import annotations

from typing import Final

from proxy.core.errors import (
    AuthenticationFailed,
    Conflict,
    InternalError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProxyError,
)
from proxy.core.vocabulary import Refusal as R


class Context:
    PROXY: Final = "proxy"  # a member's proxy key: the proxy and the member's own routes
    CHECK: Final = "check"  # the check API (service token)
    ADMIN: Final = "admin"  # the administration layer (admin tokens, the operator)
    ADMIN_TOKEN: Final = "admin_token"  # resolving an admin token to its member
    ALL: Final = (PROXY, CHECK, ADMIN, ADMIN_TOKEN)


Answer = tuple[type[ProxyError], str]

_UNREADABLE: Final[Answer] = (
    InternalError,
    "the usage store holds a value for this organization that the proxy cannot read; "
    "nothing is charged and nothing was sent: an operator must look",
)
_UNBOUNDED: Final[Answer] = (
    InvalidRequest,
    "this request would run on extra usage under your organization's strict spend policy, "
    "which must bound every cost, and {detail} has none: give every web search tool a "
    "max_uses, every web fetch tool a max_uses and a max_content_tokens, and send documents "
    "and images inline rather than by URL",
)
_UNKNOWN_TIER: Final[Answer] = (
    InternalError,
    "this member's seat tier {detail!r} is not configured on the proxy",
)


def _identity(credential: str, noun: str, disabled_hint: str) -> dict[str, Answer]:
    """Who the caller is, as a credential's holder hears it: a dead credential (unknown,
    revoked, its member or org gone) is a 401, a disabled member or org a 403."""
    dead = (AuthenticationFailed, f"invalid {credential}: unknown or revoked {noun}")
    return {
        **dict.fromkeys(
            (R.UNKNOWN_KEY, R.UNKNOWN_ORG, R.UNKNOWN_CREDENTIAL, R.UNKNOWN_MEMBER), dead
        ),
        R.MEMBER_DISABLED: (PermissionDenied, f"this member is disabled{disabled_hint}"),
        R.ORG_DISABLED: (PermissionDenied, f"this organization is disabled{disabled_hint}"),
        R.UNREADABLE: _UNREADABLE,
    }


TABLE: Final[dict[str, dict[str, Answer]]] = {
    Context.PROXY: {
        **_identity("x-api-key", "key", "; ask an owner of your organization"),
        R.UNBOUNDED_SERVER_TOOL: _UNBOUNDED,
        R.UNKNOWN_TIER: _UNKNOWN_TIER,
    },
    Context.CHECK: {
        R.UNKNOWN_ORG: (NotFound, "organization {org!r} not found"),
        R.UNKNOWN_MEMBER: (NotFound, "member {member!r} of {org!r} not found"),
        R.REQUEST_ID_TAKEN: (
            Conflict,
            "request_id: already used for another member's request; request ids belong to "
            "one member: use a new one",
        ),
        R.DUPLICATE_ID: (
            Conflict,
            "request_id: already used by a reservation that was settled or released; use a "
            "new request id",
        ),
        R.RELEASED: (Conflict, "reservation_id: this reservation was released"),
        R.SETTLED: (Conflict, "reservation_id: this reservation was already settled"),
        R.UNKNOWN_RESERVATION: (
            NotFound,
            "reservation_id: no such reservation (or it expired long ago)",
        ),
        R.UNKNOWN_TIER: _UNKNOWN_TIER,
        R.UNBOUNDED_SERVER_TOOL: _UNBOUNDED,
        R.UNREADABLE: _UNREADABLE,
    },
    Context.ADMIN: {
        R.UNKNOWN_ORG: (NotFound, "organization {org!r} not found"),
        R.UNKNOWN_MEMBER: (NotFound, "member {member!r} not found"),
        R.NOT_FOUND: (NotFound, "{subject} not found"),
        R.UNKNOWN_CREDENTIAL: (NotFound, "{subject} not found"),
        R.EXISTS: (Conflict, "{subject} already exists"),
        R.CONFLICT: (Conflict, "{subject} changed meanwhile; reload and retry"),
        R.NOT_TEAM: (Conflict, "purchases: only Team organizations have prepaid credit"),
        R.IDEMPOTENCY_CONFLICT: (
            Conflict,
            "idempotency_key: already used for a different amount",
        ),
        R.UNKNOWN_RELOAD: (NotFound, "{subject} not found"),
        R.UNREADABLE: _UNREADABLE,
    },
    Context.ADMIN_TOKEN: _identity("admin token", "token", ""),
}


def refusal_error(
    context: str,
    code: str,
    detail: str = "",
    *,
    org: str = "",
    member: str = "",
    subject: str = "",
) -> ProxyError:
    """The error a client of ``context`` sees for a script's refusal ``code``."""
    answer = TABLE[context].get(code)
    if answer is None:
        return InternalError(f"the usage store refused this ({code}); an operator must look")
    kind, message = answer
    return kind(
        message.format(org=org, member=member, subject=subject or "resource", detail=detail)
    )
