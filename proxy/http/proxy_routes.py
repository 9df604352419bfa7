"""The proxy surface: /v1/messages (admitted, forwarded, metered), count_tokens, models.

The handlers only: the header policy is ``proxy.http.headers``, the org's upstream credential
``proxy.upstream.credentials``, the fail_open policy ``Meter.let_through``, forwarding the
answer and settling it ``proxy.http.forwarding``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from proxy.core.errors import (
    InvalidRequest,
    NotFound,
    ProxyError,
    RequestTimeout,
    StoreUnavailable,
    UpstreamUnavailable,
)
from proxy.core.refusals import Context
from proxy.core.request_fields import parse_message_request
from proxy.core.tools import request_bounds
from proxy.core.vocabulary import Decision, Refusal
from proxy.http.appkeys import (
    ACCESS_LOG,
    CONFIG,
    METER,
    METRICS,
    REQUEST_ID,
    SLOTS,
    STORE,
    UPSTREAM,
    VERIFIED,
)
from proxy.http.auth import ProxyKey, answered, member_of_key, proxy_key
from proxy.http.body import read_body
from proxy.http.forwarding import Metered, forward_body, forward_error, forward_stream, release
from proxy.http.headers import response_headers, upstream_headers
from proxy.http.server import wait_for_api
from proxy.obs.logs import Throttled
from proxy.storage.store import StoreRefusal
from proxy.upstream.client import Response, UpstreamError, UpstreamTimeout
from proxy.upstream.credentials import upstream_key
from proxy.upstream.upload import Upload, streamable

failures = Throttled(logging.getLogger(__name__))


# the request holds one of its org's upstream slots (given back when its handler ends)
HOLDS_SLOT = web.RequestKey("holds_slot", bool)


def take_slot(request: web.Request, org: str) -> None:
    """One of the org's upstream slots, taken when the request is about to use the API (its
    body read, or its upload starting): a member sending a body slowly holds none."""
    request.app[SLOTS].take(org)
    request[HOLDS_SLOT] = True


def usage_page(request: web.Request) -> str:
    """The member's usage page: its absolute URL under ``server.public_url``, else its path
    (never a URL made of the request's ``Host``, which the caller chose)."""
    return request.app[CONFIG].server.public_url + "/usage"


def upstream_failure(exc: UpstreamError) -> str:
    """What a member is told when the API could not be reached (the details, which name
    hosts and addresses, go to the log)."""
    failures.warning("upstream", "upstream request failed", error=str(exc))
    if isinstance(exc, UpstreamTimeout):
        return "the Anthropic API did not answer in time; try again"
    return "the Anthropic API could not be reached; try again"


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages: admit (round trip 1), forward, settle (round trip 2), within one of
    the org's upstream slots."""
    started = time.perf_counter()
    key = proxy_key(request)
    try:
        return await _messages(request, key, started)
    finally:
        if HOLDS_SLOT in request:
            request.app[SLOTS].give(key.org)


async def _messages(request: web.Request, key: ProxyKey, started: float) -> web.StreamResponse:
    app = request.app
    cfg, meter, metrics = app[CONFIG], app[METER], app[METRICS]
    checked = False
    if not meter.fresh(key.secret_hash):
        # a key this process has not admitted lately: checked before its body is read, so
        # that no unknown or revoked key makes a worker hold a body
        await _authenticate(request)
        checked = True
    upload = await _upload_early(request, key, checked)
    try:
        if upload is None:
            body = await read_body(request, cfg.server.max_body_bytes, cfg.server.body_timeout_s)
            take_slot(request, key.org)  # only once the body is in: a slow body holds none
        else:
            try:
                async with asyncio.timeout(cfg.server.body_timeout_s):
                    body = await upload.read(request)
            except TimeoutError as exc:
                raise RequestTimeout(
                    f"the request body did not arrive within {cfg.server.body_timeout_s:g} s"
                ) from exc
        ref, m = await _admit(request, key, body, started)
        try:
            api_key = upstream_key(cfg.upstream, ref)
        except ProxyError:
            await release(app, m)
            raise
    except BaseException:
        if upload is not None:
            upload.cut()
            meter.count_upload("cut")
        raise
    metrics.h_overhead.observe(time.perf_counter() - started)
    m.sent_at = time.perf_counter()
    # from now until the answer is forwarded, a member who goes away cancels the handler:
    # the request is dropped (not sent, if it still waits for a connection), or cut (sent),
    # the upstream request closed at once, and what came is charged (nothing: released)
    wait_for_api(request, True)
    m.send()
    try:
        upstream = await _send(request, m, upload, ref, api_key, body)
        metrics.h_upstream_ttfb.observe(time.perf_counter() - m.sent_at)
        try:
            if upstream.status != 200:
                return await forward_error(request, upstream, m)
            if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                return await forward_stream(request, upstream, m)
            return await forward_body(request, upstream, m)
        finally:
            upstream.release()
    finally:
        wait_for_api(request, False)


async def _send(
    request: web.Request, m: Metered, upload: Upload | None, ref: str, api_key: str, body: bytes
) -> Response:
    """The request, sent (or its early upload released): the API's status and headers. Not
    sent or cut, its reservation is released."""
    app = request.app
    meter, metrics = app[METER], app[METRICS]
    try:
        if upload is not None:
            if upload.ref == ref:
                upstream = await upload.release()
                meter.count_upload("sent" if upstream is not None else "resent")
                if upstream is not None:
                    return upstream
            else:  # the org's credential changed: send the body again with the new one
                upload.cut()
                meter.count_upload("resent")
        headers = upstream_headers(request.headers, api_key)
        return await app[UPSTREAM].request("POST", request.raw_path, headers, body)
    except UpstreamError as exc:
        await release(app, m)
        metrics.upstream_errors.labels("connect").inc()
        raise UpstreamUnavailable(upstream_failure(exc)) from exc
    except asyncio.CancelledError:
        if upload is not None:
            upload.cut()
        meter.track(release(app, m))  # in a task of its own: this one is being cancelled
        metrics.upstream_errors.labels("member_gone").inc()
        raise


async def _authenticate(request: web.Request) -> None:
    """The key's member, checked in Redis (401/403 when unknown, revoked or disabled)."""
    try:
        await member_of_key(request.app[STORE], request)
    except StoreUnavailable:
        # fail_open: a key this process knows goes on to the admission, as before
        request.app[METER].let_through(proxy_key(request).secret_hash)


async def _upload_early(request: web.Request, key: ProxyKey, checked: bool) -> Upload | None:
    """A large body of a key admitted here before starts upstream as it arrives — once the
    key is checked in Redis just now (``checked``, or here): no upstream request is opened
    for a revoked key."""
    app = request.app
    length = streamable(request, app[CONFIG].server.max_body_bytes)
    if length is None:  # the common case: a small body
        return None
    meter = app[METER]
    ref = meter.upstream_refs.get(key.org)
    if ref is None or key.secret_hash not in meter.known_keys:
        return None
    if not checked:
        await _authenticate(request)
    try:
        api_key = upstream_key(app[CONFIG].upstream, ref)
    except ProxyError:
        return None
    headers = upstream_headers(request.headers, api_key)
    take_slot(request, key.org)  # the upload holds an upstream connection from now on
    return Upload(app[UPSTREAM], request.raw_path, headers, length, ref)


async def _admit(
    request: web.Request, key: ProxyKey, body: bytes, started: float
) -> tuple[str, Metered]:
    """Round trip 1: (the org's upstream credential reference, the metered request with its
    admission — None when it runs unmetered under fail_open). Raises the refusal."""
    app = request.app
    meter, metrics = app[METER], app[METRICS]
    rid: str = request[REQUEST_ID]
    model, max_tokens, _stream = parse_message_request(body)
    tools = request_bounds(body)
    max_cost, est_cost = meter.bounds(model, len(body), max_tokens, tools)
    accept = request.headers.get("x-extra-usage", "").strip().lower() == "accept"
    try:
        adm = await meter.admit_request(
            key.org,
            rid,
            key.secret_hash,
            max_cost=max_cost,
            est_cost=est_cost,
            accept_extra=accept,
            unbounded=bool(tools.unbounded),
        )
    except StoreRefusal as exc:
        if exc.code == Refusal.UNBOUNDED_SERVER_TOOL:
            exc.detail = tools.unbounded  # what has no bound, in the member's words
        raise answered(Context.PROXY, exc) from exc
    request[VERIFIED] = True  # admitted or refused, the key is the member's
    price = meter.prices.resolve(model)
    if not price.known:
        metrics.child(metrics.unknown_models, price.line or "none").inc()
    if adm is None:
        ref = meter.upstream_refs.get(key.org, "")
    elif not adm.allowed:
        meter.record_decision(adm)
        app[ACCESS_LOG].request(
            request_id=rid,
            org=key.org,
            member=adm["member"],
            mode=Decision.DENY,
            reason=adm["reason"],
            status=429,
            cost="0",
            started=started,
        )
        refused = meter.refuse(adm, model, len(body), max_cost, usage_page(request))
        refused.logged = True
        raise refused
    else:
        meter.admitted(key.org, adm, key.secret_hash)
        ref = adm["upstream"]
    return ref, Metered(app, rid, key, model, adm, started, len(body), max_tokens)


async def passthrough(request: web.Request) -> web.StreamResponse:
    """count_tokens and models: forwarded for a valid member, never blocked (but by the org's
    upstream slots), not metered."""
    key = proxy_key(request)
    try:
        return await _passthrough(request, key)
    finally:
        if HOLDS_SLOT in request:
            request.app[SLOTS].give(key.org)


async def _passthrough(request: web.Request, key: ProxyKey) -> web.StreamResponse:
    app = request.app
    try:
        who = await member_of_key(app[STORE], request)
        ref = who["upstream"]
    except StoreUnavailable:
        app[METER].let_through(key.secret_hash)
        # fail_open: nothing to meter here, so the key's shape is all that can be checked
        ref = app[METER].upstream_refs.get(key.org, "")
    api_key = upstream_key(app[CONFIG].upstream, ref)
    server = app[CONFIG].server
    body = await read_body(request, server.max_body_bytes, server.body_timeout_s)
    take_slot(request, key.org)
    headers = upstream_headers(request.headers, api_key)
    # HEAD goes upstream as GET: an answer to HEAD has no body, and the client would wait
    # for the one its Content-Length announces (aiohttp sends the member no body for HEAD)
    method = "GET" if request.method == "HEAD" else request.method
    wait_for_api(request, True)  # nothing to wait for once the member is gone
    try:
        upstream = await app[UPSTREAM].request(
            method, request.raw_path, headers, None if method == "GET" else body
        )
        try:
            payload = await upstream.read()
        finally:
            upstream.release()
    except UpstreamError as exc:
        raise UpstreamUnavailable(upstream_failure(exc)) from exc
    finally:
        wait_for_api(request, False)
    return web.Response(
        status=upstream.status, body=payload, headers=response_headers(upstream.headers)
    )


UNMETERED = ("/v1/messages/batches", "/v1/complete")


async def refuse_unmetered(request: web.Request) -> web.StreamResponse:
    if request.path.startswith(UNMETERED):
        raise InvalidRequest(
            f"{request.path} is not available through this proxy: it would "
            "run inference without metering; use POST /v1/messages"
        )
    raise NotFound(f"{request.method} {request.path} is not served by this proxy")


async def head_root(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)
