"""The proxy surface: /v1/messages (admitted, forwarded, metered), count_tokens, models.

The member's key never goes upstream: the org's upstream credential replaces it.
``anthropic-*`` and unknown headers and the body pass through unchanged; hop-by-hop headers
are dropped; responses come back unmodified apart from the unified rate-limit headers (and a
gzip or deflate body, which ``proxy.upstream.client`` decodes to read the usage, comes back decoded
without its ``Content-Encoding``). Streams are forwarded chunk by chunk as they arrive.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.core.admission import Admission
from proxy.core.decision import unified_headers
from proxy.core.errors import (
    InternalError,
    InvalidRequest,
    NotFound,
    ProxyError,
    StoreUnavailable,
    UpstreamUnavailable,
)
from proxy.core.pricing import Usage
from proxy.core.request_fields import parse_message_request
from proxy.core.usage import StreamUsage, response_usage
from proxy.http.appkeys import CONFIG, METRICS, STORE, UPSTREAM
from proxy.http.auth import ProxyKey, member_of_key, proxy_key, raise_for_identity
from proxy.http.body import read_body
from proxy.metering.meter import Meter
from proxy.obs.logs import AccessLog
from proxy.storage.store import NOT_SENT, StoreRefusal
from proxy.upstream.client import Response, UpstreamError
from proxy.upstream.upload import Upload, streamable

log = logging.getLogger(__name__)

METER: web.AppKey[Meter] = web.AppKey("meter")
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
REQUEST_ID = web.RequestKey("request_id", str)  # the id the errors middleware gave it

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# never sent upstream: our credentials and framing the client session recomputes
_DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "accept-encoding",  # the API answers unencoded: the proxy reads the usage in it
    "expect",  # the body is sent at once; an interim 100 would only cost a round trip
    "x-extra-usage",
}
# never copied back: the framing, recomputed for the member (a gzip or deflate body arrives
# decoded, without its Content-Encoding: proxy.upstream.client)
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}


_ID_PREFIX = f"req_eup_{secrets.token_hex(6)}"
_ids = itertools.count(1)


def new_request_id() -> str:
    """Unique without a system call per request: a random per-process prefix and a counter
    (the id keys the request's reservation, so it must never repeat across processes)."""
    return f"{_ID_PREFIX}{next(_ids):010x}"


def upstream_headers(incoming: CIMultiDictProxy[str], api_key: str) -> list[tuple[str, str]]:
    out = [(name, value) for name, value in incoming.items() if name.lower() not in _DROP_REQUEST]
    out.append(("x-api-key", api_key))
    return out


def response_headers(upstream: Mapping[str, str] | CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in _DROP_RESPONSE:
            out.add(name, value)
    return out


def upstream_key(app: web.Application, ref: str) -> str:
    """The org's upstream credential: the variable its reference names, or the default."""
    if ref:
        value = os.environ.get(ref)
        if not value:
            raise InternalError(
                f"the upstream credential {ref!r} of this organization is "
                "not configured on the proxy"
            )
        return value
    return app[CONFIG].upstream.api_key


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages: admit (round trip 1), forward, settle (round trip 2)."""
    app = request.app
    cfg, meter, metrics = app[CONFIG], app[METER], app[METRICS]
    started = time.perf_counter()
    key = proxy_key(request)
    upload = _upload_early(request, key)
    try:
        if upload is None:
            body = await read_body(request, cfg.server.max_body_bytes)
        else:
            body = await upload.read(request)
        ref, ctx = await _admit(request, key, body, started)
        try:
            api_key = upstream_key(app, ref)
        except ProxyError:
            await _release(request, ctx)
            raise
    except BaseException:
        if upload is not None:
            upload.cut()
            meter.count_upload("cut")
        raise
    metrics.h_overhead.observe(time.perf_counter() - started)
    ctx.t0 = time.perf_counter()
    try:
        upstream = None
        if upload is not None:
            if upload.ref == ref:
                upstream = await upload.release()
                meter.count_upload("sent" if upstream is not None else "resent")
            else:  # the org's credential changed: send the body again with the new one
                upload.cut()
                meter.count_upload("resent")
        if upstream is None:
            headers = upstream_headers(request.headers, api_key)
            upstream = await app[UPSTREAM].request("POST", request.raw_path, headers, body)
    except UpstreamError as exc:
        await _release(request, ctx)
        metrics.upstream_errors.labels("connect").inc()
        raise UpstreamUnavailable(f"the Anthropic API could not be reached: {exc}") from exc
    metrics.h_upstream_ttfb.observe(time.perf_counter() - ctx.t0)
    try:
        if upstream.status != 200:
            return await _forward_error(request, upstream, ctx)
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            return await _forward_stream(request, upstream, ctx)
        return await _forward_body(request, upstream, ctx)
    finally:
        upstream.release()


def _upload_early(request: web.Request, key: ProxyKey) -> Upload | None:
    """A large body of a key admitted here before starts upstream as it arrives."""
    app = request.app
    length = streamable(request, app[CONFIG].server.max_body_bytes)
    if length is None:  # the common case: a small body
        return None
    meter = app[METER]
    ref = meter.upstream_refs.get(key.org)
    if ref is None or key.secret_hash not in meter.known_keys:
        return None
    try:
        api_key = upstream_key(app, ref)
    except ProxyError:
        return None
    headers = upstream_headers(request.headers, api_key)
    return Upload(app[UPSTREAM], request.raw_path, headers, length, ref)


async def _admit(
    request: web.Request, key: ProxyKey, body: bytes, started: float
) -> tuple[str, _Ctx]:
    """Round trip 1: (the org's upstream credential reference, the request's context with
    its admission — None when it runs unmetered under fail_open). Raises the refusal."""
    app = request.app
    cfg, meter, metrics = app[CONFIG], app[METER], app[METRICS]
    rid: str = request[REQUEST_ID]
    model, max_tokens, _stream = parse_message_request(body)
    max_cost, est_cost = meter.bounds(model, len(body), max_tokens)
    accept = request.headers.get("x-extra-usage", "").strip().lower() == "accept"
    try:
        adm = await app[STORE].admit(
            key.org,
            rid,
            who="k",
            credential=key.secret_hash,
            max_cost=max_cost,
            est_cost=est_cost,
            accept_extra=accept,
            lean=True,
        )
    except StoreRefusal as exc:
        raise_for_identity(exc)
        if exc.code == "unknown_tier":
            raise InternalError(
                f"this member's seat tier {exc.detail!r} is not configured on the proxy"
            ) from exc
        raise InternalError(f"admission refused: {exc.code}") from exc
    except StoreUnavailable:
        if cfg.policy.fail_mode != "open":
            raise StoreUnavailable(
                "the usage store (Redis) is unavailable and this proxy fails closed: requests "
                "are refused until it is back"
            ) from None
        # fail_open: let the request run unmetered now; its usage is journaled and replayed
        metrics.fail_open.inc()
        adm = None
    if not meter.prices.resolve(model).known:
        metrics.unknown_models.inc()
    if adm is None:
        ref = meter.upstream_refs.get(key.org, "")
    elif not adm.allowed:
        meter.record_decision(adm)
        app[ACCESS_LOG].write(
            request_id=rid,
            org=key.org,
            member=adm["member"],
            mode="deny",
            reason=adm["reason"],
            status=429,
            cost="0",
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        raise meter.refuse(adm, model, len(body), max_cost)
    else:
        meter.record_decision(adm)
        ref = meter.upstream_refs[key.org] = adm["upstream"]
        meter.remember_key(key.secret_hash)
    return ref, _Ctx(rid, key, model, adm, started)


class _Ctx:
    """One metered request on its way: who, what, and what admission decided (None when it
    runs unmetered under fail_open)."""

    __slots__ = ("adm", "key", "model", "org", "rid", "started", "t0")

    def __init__(
        self, rid: str, key: ProxyKey, model: str, adm: Admission | None, started: float
    ) -> None:
        self.rid, self.key, self.org, self.model, self.adm = rid, key, key.org, model, adm
        self.started = self.t0 = started


def _out_headers(upstream: Response, ctx: _Ctx) -> CIMultiDict[str]:
    out = response_headers(upstream.headers)
    if ctx.adm is not None:
        out.update(unified_headers(ctx.adm))
    return out


async def _release(request: web.Request, ctx: _Ctx) -> None:
    if ctx.adm is not None:
        await request.app[METER].release(ctx.org, ctx.rid)


def _finish(
    request: web.Request,
    ctx: _Ctx,
    usage: Usage,
    status: int,
    model: str | None = None,
    **extra: Any,
) -> tuple[asyncio.Task[None], Awaitable[bool]]:
    """Settle (or under fail_open journal the usage durably), then log the request, in a
    task of its own. The second value resolves True once the settlement is written to
    Redis: the member may then see the end of the answer, since their next request is
    admitted after the charge; on False the caller waits for the task."""
    meter = request.app[METER]
    model = model or ctx.model
    settling: Awaitable[dict[str, str] | None]
    sent: Awaitable[bool]
    if ctx.adm is None:
        settling = meter.journal_usage(ctx.org, ctx.rid, ctx.key.secret_hash, model, usage)
        sent = NOT_SENT
    else:
        settling, sent = meter.settle_start(
            ctx.org, ctx.rid, model, usage, key_hash=ctx.key.secret_hash, policy=ctx.adm["policy"]
        )
    task = meter.track(_settled(request.app, ctx, settling, usage, status, model, extra))
    return task, sent


async def _settled(
    app: web.Application,
    ctx: _Ctx,
    settling: Awaitable[dict[str, str] | None],
    usage: Usage,
    status: int,
    model: str,
    extra: dict[str, Any],
) -> None:
    result = await settling
    cost: str | None
    if ctx.adm is None:
        cost = str(app[METER].prices.cost(model, usage))
        member, mode = None, "journaled"
    else:
        cost = result["cost"] if result else None
        member, mode = ctx.adm["member"], ctx.adm["mode"]
    metrics = app[METRICS]
    metrics.h_upstream_latency.observe(time.perf_counter() - ctx.t0)
    metrics.child(metrics.requests, "messages", str(status)).inc()
    app[ACCESS_LOG].write(
        request_id=ctx.rid,
        org=ctx.org,
        member=member,
        mode=mode,
        model=model,
        cost=cost,
        status=status,
        latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
        **extra,
    )


async def _forward_error(request: web.Request, upstream: Response, ctx: _Ctx) -> web.StreamResponse:
    """Upstream error before any byte: release, charge nothing, forward the error unmodified."""
    body = await _read_all(request, upstream, ctx)
    await _release(request, ctx)
    request.app[METRICS].upstream_errors.labels(str(upstream.status)).inc()
    request.app[METRICS].requests.labels("messages", str(upstream.status)).inc()
    request.app[ACCESS_LOG].write(
        request_id=ctx.rid,
        org=ctx.org,
        member=ctx.adm["member"] if ctx.adm else None,
        mode="released",
        status=upstream.status,
        cost="0",
        latency_ms=round((time.perf_counter() - ctx.started) * 1000, 3),
    )
    return web.Response(
        status=upstream.status, body=body, headers=response_headers(upstream.headers)
    )


async def _read_all(request: web.Request, upstream: Response, ctx: _Ctx) -> bytes:
    """The whole response body; cut short, the reservation is released (nothing is charged)
    and the member gets a 502."""
    try:
        return await upstream.read()
    except UpstreamError as exc:
        await _release(request, ctx)
        raise UpstreamUnavailable("the Anthropic API response was cut short") from exc


async def _forward_body(request: web.Request, upstream: Response, ctx: _Ctx) -> web.StreamResponse:
    body = await _read_all(request, upstream, ctx)
    usage, model = response_usage(body)
    # the charge is written to Redis before the member sees the answer: their next request
    # is admitted after it
    settling, sent = _finish(request, ctx, usage or Usage(), upstream.status, model)
    if not await sent:
        await asyncio.shield(settling)
    return web.Response(status=upstream.status, body=body, headers=_out_headers(upstream, ctx))


async def _forward_stream(
    request: web.Request, upstream: Response, ctx: _Ctx
) -> web.StreamResponse:
    metrics = request.app[METRICS]
    meter = StreamUsage()
    resp = web.StreamResponse(status=upstream.status, headers=_out_headers(upstream, ctx))
    outcome = "complete"
    settled = False
    metrics.active_streams.inc()
    try:
        await resp.prepare(request)
        async for chunk in upstream.chunks():
            await resp.write(chunk)  # forward first: parsing for usage must not delay it
            meter.feed(chunk)
        # the charge is written before the terminating chunk: the member sees the end after it
        outcome = "upstream_error_event" if meter.errored else outcome
        settling, sent = _finish(
            request, ctx, meter.usage(), upstream.status, meter.model, stream=outcome
        )
        settled = True
        if not await sent:
            await asyncio.shield(settling)
        await resp.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        # the client went away: stop paying for tokens nobody reads
        outcome = "client_disconnected"
        upstream.close()
    except UpstreamError:
        outcome = "upstream_broken"
        metrics.upstream_errors.labels("mid_stream").inc()
        upstream.close()
        if request.transport is not None:
            request.transport.close()
    except asyncio.CancelledError:
        outcome = "cancelled"
        upstream.close()
        raise
    finally:
        metrics.active_streams.dec()
        if not settled:
            _finish(request, ctx, meter.usage(), upstream.status, meter.model, stream=outcome)
    return resp


async def passthrough(request: web.Request) -> web.StreamResponse:
    """count_tokens and models: forwarded for a valid member, never blocked, not metered."""
    app = request.app
    try:
        who = await member_of_key(app[STORE], request)
        ref = who.get("upstream", "")
    except StoreUnavailable:
        if app[CONFIG].policy.fail_mode != "open":
            raise
        # fail_open: nothing to meter here, so the key's shape is all that can be checked
        ref = app[METER].upstream_refs.get(proxy_key(request).org, "")
    api_key = upstream_key(app, ref)
    body = await read_body(request, app[CONFIG].server.max_body_bytes)
    headers = upstream_headers(request.headers, api_key)
    try:
        upstream = await app[UPSTREAM].request(
            request.method, request.raw_path, headers, None if request.method == "GET" else body
        )
        try:
            payload = await upstream.read()
        finally:
            upstream.release()
    except UpstreamError as exc:
        raise UpstreamUnavailable(f"the Anthropic API could not be reached: {exc}") from exc
    route = "count_tokens" if request.path.endswith("count_tokens") else "models"
    app[METRICS].requests.labels(route, str(upstream.status)).inc()
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
