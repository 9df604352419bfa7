"""Who is calling: proxy keys (members), admin tokens, the operator and service tokens."""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass

from aiohttp import web

from proxy.core.credentials import ADMIN_TOKEN_PREFIX, PROXY_KEY_PREFIX, hash_secret, org_of
from proxy.core.errors import AuthenticationFailed, InternalError, PermissionDenied
from proxy.storage.model import OFF
from proxy.storage.store import UNREADABLE, Store, StoreRefusal


def presented_secret(request: web.Request) -> str | None:
    """The secret from ``x-api-key`` (SDK 1.x, Claude Code) or ``Authorization: Bearer``."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


@dataclass(frozen=True, slots=True)
class ProxyKey:
    org: str
    secret_hash: str


def proxy_key(request: web.Request) -> ProxyKey:
    """The member's proxy key, shape-checked; whether it exists is decided in Redis."""
    secret = presented_secret(request)
    if not secret:
        raise AuthenticationFailed(
            "missing API key: send your proxy key in x-api-key or Authorization: Bearer"
        )
    key = _parse_proxy_key(secret)
    if key is None:
        raise AuthenticationFailed("invalid x-api-key: not a key issued by this proxy")
    return key


def org_of_request(request: web.Request) -> str | None:
    """The org a request's proxy key names, if it carries one (for its log line)."""
    secret = presented_secret(request)
    key = _parse_proxy_key(secret) if secret else None
    return key.org if key is not None else None


@functools.lru_cache(maxsize=4096)
def _parse_proxy_key(secret: str) -> ProxyKey | None:
    """A key's org and hash, remembered for the keys in use: a member sends the same key with
    every request, and its shape check and SHA-256 are the same every time (whether the key
    still exists is decided in Redis, so a revoked key cached here is still refused)."""
    org = org_of(secret, PROXY_KEY_PREFIX)
    return None if org is None else ProxyKey(org, hash_secret(secret))


UNKNOWN_KEY_CODES = frozenset(
    {"unknown_key", "unknown_org", "unknown_credential", "unknown_member"}
)


def raise_for_identity(refusal: StoreRefusal) -> None:
    """Translate a script's refusal about the caller into 401/403."""
    if refusal.code in UNKNOWN_KEY_CODES:
        raise AuthenticationFailed("invalid x-api-key: unknown or revoked key") from refusal
    if refusal.code in ("member_disabled", "org_disabled"):
        what = "member" if refusal.code == "member_disabled" else "organization"
        raise PermissionDenied(
            f"this {what} is disabled; ask an owner of your organization"
        ) from refusal


def raise_for_store(refusal: StoreRefusal) -> None:
    """A refusal that is not about the caller: the store answered a reply it cannot read
    (a value no API lets in) — a 500 an operator must act on, neither an outage nor the
    caller's fault."""
    if refusal.code == UNREADABLE:
        raise InternalError(
            "the usage store holds a value for this organization that the proxy cannot read; "
            "nothing is charged and nothing was sent: an operator must look"
        ) from refusal


async def member_of_key(store: Store, request: web.Request) -> dict[str, str]:
    """Resolve a proxy key to its member (one read), or raise 401/403."""
    key = proxy_key(request)
    try:
        who = await store.whois(key.org, "k", key.secret_hash)
    except StoreRefusal as exc:
        raise_for_identity(exc)
        raise
    if who["enabled"] == OFF:
        raise PermissionDenied("this member is disabled; ask an owner of your organization")
    return {**who, "org": key.org}


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def is_token(presented: str | None, expected: str) -> bool:
    return (
        bool(expected)
        and presented is not None
        and hmac.compare_digest(presented.encode(), expected.encode())
    )


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts on the admin API: the operator, or a member with a role in one org."""

    name: str
    role: str  # operator | primary_owner | owner | admin | member
    org: str | None = None
    member: str | None = None

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def can_read(self, org: str) -> bool:
        return self.operator or (
            self.org == org and self.role in ("primary_owner", "owner", "admin")
        )

    def can_change(self, org: str) -> bool:
        return self.operator or (self.org == org and self.role in ("primary_owner", "owner"))


async def admin_actor(store: Store, request: web.Request, operator_token: str) -> Actor:
    token = bearer(request)
    if not token:
        raise AuthenticationFailed("missing admin token: send Authorization: Bearer <token>")
    if is_token(token, operator_token):
        return Actor("operator", "operator")
    org = org_of(token, ADMIN_TOKEN_PREFIX)
    if org is None:
        raise AuthenticationFailed("invalid admin token")
    try:
        who = await store.whois(org, "t", hash_secret(token))
    except StoreRefusal as exc:
        raise AuthenticationFailed("invalid admin token: unknown or revoked") from exc
    if who["enabled"] == OFF:
        raise PermissionDenied("this member is disabled")
    return Actor(f"member:{who['member']}", who["role"], org, who["member"])
