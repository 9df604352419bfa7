"""Every client-visible error leaves through ``error_response``, in the Anthropic envelope
(the hierarchy itself is ``proxy.core.errors``)."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.core.errors import ProxyError


def error_body(error_type: str, message: str, request_id: str | None) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
    )


def error_response(err: ProxyError, request_id: str | None) -> web.Response:
    headers = {"content-type": "application/json", **err.headers}
    if not err.retryable:
        headers.setdefault("x-should-retry", "false")
    if request_id:
        headers.setdefault("request-id", request_id)
        headers.setdefault("x-request-id", request_id)
    return web.Response(
        status=err.status, body=error_body(err.error_type, err.message, request_id), headers=headers
    )
