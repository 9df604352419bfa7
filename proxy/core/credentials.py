"""Proxy keys and admin tokens: random secrets shown once, stored only as a SHA-256 hash.

A secret names its organization (``sk-eup-acme-<64 hex>``) so that the request's one
admission script can run in that org's slot and resolve the member inside the script.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import secrets

from proxy.core.ids import ORG_ID

PROXY_KEY_PREFIX = "sk-eup-"
ADMIN_TOKEN_PREFIX = "eup-admin-"
_SECRET_HEX = 64


def new_secret(prefix: str, org: str) -> str:
    return f"{prefix}{org}-{secrets.token_hex(_SECRET_HEX // 2)}"


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(8)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def org_of(secret: str, prefix: str) -> str | None:
    """The org a secret belongs to, or None when it is not shaped like one of ours."""
    if not secret.startswith(prefix) or len(secret) < len(prefix) + _SECRET_HEX + 2:
        return None
    body = secret[len(prefix) :]
    org, dash, tail = body[: -_SECRET_HEX - 1], body[-_SECRET_HEX - 1], body[-_SECRET_HEX:]
    if dash != "-" or not ORG_ID.match(org):
        return None
    try:
        int(tail, 16)
    except ValueError:
        return None
    return org
