"""What every admin handler does first: who acts (the admin token or the operator token),
and the ids in the path (a malformed one is a 404: no such thing)."""

from __future__ import annotations

import re

from aiohttp import web

from proxy.admin.actors import Actor
from proxy.core.errors import InvalidRequest, NotFound
from proxy.core.ids import MEMBER_ID, ORG_ID
from proxy.http.appkeys import CONFIG, STORE
from proxy.http.auth import admin_actor


async def actor(request: web.Request) -> Actor:
    return await admin_actor(request.app[STORE], request, request.app[CONFIG].operator_token)


def org_id(request: web.Request) -> str:
    org = request.match_info["org"]
    if not ORG_ID.match(org):
        raise NotFound(f"organization {org!r} not found")
    return org


def member_id(request: web.Request) -> str:
    member = request.match_info["member"]
    if not MEMBER_ID.match(member):
        raise NotFound(f"member {member!r} not found")
    return member


def tiers(request: web.Request) -> list[str]:
    """The configured seat tiers' names."""
    return list(request.app[CONFIG].tiers)


_COUNT = re.compile(r"[0-9]{1,6}")


def page_size(request: web.Request, default: int, most: int) -> int:
    """A page's size from the ``limit`` query parameter: 1 to ``most``, else a 400."""
    raw = request.query.get("limit", str(default))
    if not _COUNT.fullmatch(raw) or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"limit: must be an integer from 1 to {most} (got {raw[:20]!r})")
    return int(raw)
