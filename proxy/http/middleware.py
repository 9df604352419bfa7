"""Every request: an id, a path that is one normalized path or a 400, errors in the
Anthropic envelope carrying the id, and an access line and a count by route and outcome
(unless its handler writes its own: a metered request's comes after its settlement)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.core.errors import InternalError, InvalidRequest, ProxyError, StoreUnavailable
from proxy.http.appkeys import ACCESS_LOG, DECODED, METRICS, REQUEST_ID, VERIFIED
from proxy.http.auth import org_of_request
from proxy.http.body import DECODED_HELD
from proxy.http.errors import error_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ID_PREFIX = f"req_eup_{secrets.token_hex(6)}"
_ids = itertools.count(1)


def new_request_id() -> str:
    """Unique without a system call per request: a random per-process prefix and a counter
    (the id keys the request's reservation, so it must never repeat across processes)."""
    return f"{_ID_PREFIX}{next(_ids):010x}"


CLIENT_GONE = 499  # the status a request gets in its log line when its client left first

_HTTP_ERROR_TYPES = {
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
}


# a path the proxy routes on is the path it forwards: no percent-encoded slash, backslash or
# dot, no dot segment, no backslash, no fragment, and the origin form ("/…") only
_ENCODED = re.compile(r"%(?:2[fFeE]|5[cC]|00)")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|$)")


def check_path(raw_path: str) -> None:
    """Refuse a request target that could be read two ways (a 400, before anything else)."""
    path = raw_path.split("?", 1)[0]
    if (
        path[:1] == "/"
        and path[1:2] != "/"
        and not ("%" in path or "." in path or "\\" in path or "#" in raw_path)
    ):
        return  # the common case, at the cost of four scans of a short string
    if not path.startswith("/") or path.startswith("//"):
        raise InvalidRequest("request target: only a path starting with a single / is served")
    if "#" in raw_path or "\\" in path:
        raise InvalidRequest("request target: fragments and backslashes are not allowed")
    if _ENCODED.search(path):
        raise InvalidRequest("request target: encoded slashes, dots and NULs are not allowed")
    if _DOT_SEGMENT.search(path):
        raise InvalidRequest("request target: '.' and '..' segments are not allowed")


def route_name(request: web.Request) -> str:
    """A bounded label for a request's route (never an id from the path)."""
    path = request.path
    if path.startswith("/v1/messages"):
        return "count_tokens" if path.endswith("/count_tokens") else "messages"
    if path.startswith("/v1/models"):
        return "models"
    if path.startswith("/v1/usage/me"):
        return "member"
    if path.startswith("/v1/usage/"):
        return "check"
    if path.startswith("/admin/v1/"):
        return "admin"
    if path in ("/", "/healthz", "/readyz", "/metrics"):
        return "probe"
    if path == "/usage":
        return "page"
    if path.startswith("/admin") or path == "/openapi.json":
        return "page"
    return "other"


class Logged:
    """A response whose handler wrote the request's access line itself (a metered request:
    after its settlement)."""


class LoggedResponse(web.Response, Logged):
    pass


class LoggedStreamResponse(web.StreamResponse, Logged):
    pass


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request[REQUEST_ID] = new_request_id()
    started = time.perf_counter()
    logged = False
    try:
        check_path(request.raw_path)
        response = await handler(request)
        logged = isinstance(response, Logged)
    except asyncio.CancelledError:
        if DECODED_HELD in request:  # the member went away: its decoded body is let go
            request.app[DECODED].give_back(request)
        raise
    except ProxyError as err:
        if isinstance(err, StoreUnavailable):
            request.app[METRICS].redis_errors.labels("request").inc()
        response = error_response(err, rid)
        logged = err.logged
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = _HTTP_ERROR_TYPES.get(exc.status, "invalid_request_error")
        http_err = ProxyError(exc.reason or "error", error_type=kind)
        http_err.status = exc.status
        response = error_response(http_err, rid)
    except ConnectionResetError:
        # the client went away (mid-body, typically): nobody to answer, nothing wrong here
        log.info("client went away", extra={"fields": {"request_id": rid}})
        response = web.Response(status=CLIENT_GONE)
    except Exception:
        log.exception("unhandled error", extra={"fields": {"path": request.path}})
        response = error_response(InternalError("internal error in the proxy"), rid)
    if not logged:  # (a metered answer names its request itself: forwarding.out_headers)
        _log(request, rid, response.status, started)
        if not response.prepared:
            response.headers.setdefault("x-request-id", rid)  # every answer names its request
            security_headers(request.path, response)
    if DECODED_HELD in request:
        request.app[DECODED].give_back(request)
    if VERIFIED not in request:
        # no credential checked: the connection is not kept alive for it (an unauthenticated
        # probe cannot hold a connection open by renewing its idle timer)
        response.force_close()
    return response


def _log(request: web.Request, rid: str, status: int, started: float) -> None:
    app = request.app
    route = route_name(request)
    metrics = app[METRICS]
    metrics.child(metrics.requests, route, str(status)).inc()
    key = org_of_request(request)
    app[ACCESS_LOG].request(
        request_id=rid,
        org=key,
        member=None,
        mode=route,
        status=status,
        cost=None,
        started=started,
        method=request.method,
    )


# the pages load their own module and stylesheet only, and nothing may frame them
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def security_headers(path: str, response: web.StreamResponse) -> None:
    """No content sniffing and no referrer on the proxy's own answers, and the pages' CSP;
    what the API answered (a metered request, count_tokens, models) comes back as it came."""
    if path.startswith(("/v1/messages", "/v1/models")):
        return
    h = response.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    if path == "/usage" or (path.startswith("/admin") and not path.startswith("/admin/v1/")):
        h.setdefault("Content-Security-Policy", PAGE_POLICY)
        h.setdefault("X-Frame-Options", "DENY")
