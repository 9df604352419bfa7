"""Who is calling: proxy keys (members), admin tokens, the operator and service tokens."""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass

from aiohttp import web

from proxy.admin.actors import OPERATOR, Actor, member_actor
from proxy.core.credentials import ADMIN_TOKEN_PREFIX, PROXY_KEY_PREFIX, hash_secret, org_of
from proxy.core.errors import AuthenticationFailed, PermissionDenied, ProxyError
from proxy.core.refusals import Context, refusal_error
from proxy.http.appkeys import VERIFIED
from proxy.storage.store import ADMIN_TOKEN, PROXY_KEY, Store, StoreRefusal, who_enabled


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


def answered(context: str, refusal: StoreRefusal) -> ProxyError:
    """A script's refusal as the error a client of ``context`` sees (the one table:
    ``proxy.core.refusals``)."""
    return refusal_error(context, refusal.code, refusal.detail)


async def member_of_key(store: Store, request: web.Request) -> dict[str, str]:
    """Resolve a proxy key to its member (one read), or raise 401/403."""
    key = proxy_key(request)
    try:
        who = await store.whois(key.org, PROXY_KEY, key.secret_hash)
    except StoreRefusal as exc:
        raise answered(Context.PROXY, exc) from exc
    if not who_enabled(who):
        raise PermissionDenied("this member is disabled; ask an owner of your organization")
    request[VERIFIED] = True
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


async def admin_actor(store: Store, request: web.Request, operator_token: str) -> Actor:
    token = bearer(request)
    if not token:
        raise AuthenticationFailed("missing admin token: send Authorization: Bearer <token>")
    if is_token(token, operator_token):
        request[VERIFIED] = True
        return OPERATOR
    org = org_of(token, ADMIN_TOKEN_PREFIX)
    if org is None:
        raise AuthenticationFailed("invalid admin token")
    try:
        who = await store.whois(org, ADMIN_TOKEN, hash_secret(token))
    except StoreRefusal as exc:
        raise answered(Context.ADMIN_TOKEN, exc) from exc
    if not who_enabled(who):
        raise PermissionDenied("this member is disabled")
    request[VERIFIED] = True
    return member_actor(org, who["member"], who["role"])


async def member_actor_of_key(store: Store, request: web.Request) -> Actor:
    """The member a proxy key belongs to, acting on their own settings."""
    who = await member_of_key(store, request)
    return member_actor(who["org"], who["member"], who["role"])
