"""Every request gets an id; every error leaves in the Anthropic envelope carrying it."""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.core.errors import InternalError, ProxyError, StoreUnavailable
from proxy.http.appkeys import METRICS, REQUEST_ID
from proxy.http.errors import error_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ID_PREFIX = f"req_eup_{secrets.token_hex(6)}"
_ids = itertools.count(1)


def new_request_id() -> str:
    """Unique without a system call per request: a random per-process prefix and a counter
    (the id keys the request's reservation, so it must never repeat across processes)."""
    return f"{_ID_PREFIX}{next(_ids):010x}"


_HTTP_ERROR_TYPES = {
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request[REQUEST_ID] = new_request_id()
    try:
        return await handler(request)
    except ProxyError as err:
        if isinstance(err, StoreUnavailable):
            request.app[METRICS].redis_errors.labels("request").inc()
        return error_response(err, rid)
    except web.HTTPException as exc:
        if exc.status >= 400:
            kind = _HTTP_ERROR_TYPES.get(exc.status, "invalid_request_error")
            http_err = ProxyError(exc.reason or "error", error_type=kind)
            http_err.status = exc.status
            return error_response(http_err, rid)
        raise
    except Exception:
        log.exception("unhandled error", extra={"fields": {"path": request.path}})
        return error_response(InternalError("internal error in the proxy"), rid)
