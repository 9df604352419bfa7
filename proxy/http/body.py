"""Request bodies: read within the size limit, and JSON objects for the APIs."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.core.errors import RequestTooLarge
from proxy.core.validate import parse_object


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(
            f"request body is {request.content_length} bytes; the limit is {limit} bytes"
        )
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestTooLarge(f"request body is over the limit of {limit} bytes") from exc


async def json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw and allow_empty:
        return {}
    return parse_object(raw)
