"""Builds the aiohttp application. Every resource is opened in cleanup_ctx, under an AppKey."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.config import Config
from proxy.core.errors import InternalError, ProxyError, StoreUnavailable
from proxy.http import check_api, member_routes
from proxy.http.admin import billing, extra_usage, orgs, requests
from proxy.http.appkeys import CONFIG, LEDGER, METRICS, PAYMENTS, STORE, UPSTREAM
from proxy.http.errors import error_response
from proxy.http.openapi import document
from proxy.http.proxy_routes import (
    ACCESS_LOG,
    METER,
    REQUEST_ID,
    head_root,
    messages,
    new_request_id,
    passthrough,
    refuse_unmetered,
)
from proxy.ledger.db import LazyLedger
from proxy.metering.journal import Journal
from proxy.metering.meter import Meter
from proxy.metering.payments import Payments
from proxy.obs.logs import AccessLog
from proxy.obs.metrics import Metrics
from proxy.storage.store import RedisClient, Store, make_client
from proxy.upstream.client import Upstream

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request gets an id; every error leaves in the Anthropic envelope carrying it."""
    rid = request[REQUEST_ID] = new_request_id()
    try:
        return await handler(request)
    except ProxyError as err:
        if isinstance(err, StoreUnavailable):
            request.app[METRICS].redis_errors.labels("request").inc()
        return error_response(err, rid)
    except web.HTTPException as exc:
        if exc.status >= 400:
            kind = {
                404: "not_found_error",
                405: "invalid_request_error",
                413: "request_too_large",
            }.get(exc.status, "invalid_request_error")
            http_err = ProxyError(exc.reason or "error", error_type=kind)
            http_err.status = exc.status
            return error_response(http_err, rid)
        raise
    except Exception:
        log.exception("unhandled error", extra={"fields": {"path": request.path}})
        return error_response(InternalError("internal error in the proxy"), rid)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
        await request.app[STORE].load_scripts()
    except ProxyError as err:
        return web.json_response({"status": "unavailable", "reason": err.message}, status=503)
    return web.json_response({"status": "ready"})


STATIC = Path(__file__).parent.parent / "static"


async def admin_page(request: web.Request) -> web.FileResponse:
    """GET /admin: "Admin settings > Usage" (plain HTML and an ES module, no build step)."""
    return web.FileResponse(STATIC / "admin.html", headers={"cache-control": "no-store"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def _flush_metrics(metrics: Metrics, every_s: float = 1.0) -> None:
    """Hot-path counts reach the metric series once a second (and before each scrape): with
    ``--workers`` another worker may answer the scrape."""
    while True:
        await asyncio.sleep(every_s)
        metrics.flush()


def build_app(
    config: Config,
    *,
    redis_client: RedisClient | None = None,
    metrics: Metrics | None = None,
    access_log_fd: int | None = 2,
) -> web.Application:
    """The proxy application. ``redis_client`` lets the demo bring an embedded Redis;
    ``access_log_fd=None`` turns the per-request lines off (the demo prints its own)."""
    app = web.Application(
        client_max_size=config.server.max_body_bytes, middlewares=[errors_middleware]
    )
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics(org_labels=config.metrics.org_labels)
    app[ACCESS_LOG] = access_log = AccessLog(access_log_fd)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        client = redis_client or make_client(config.redis)
        store = Store(
            client,
            prefix=config.redis.key_prefix,
            tiers=config.tiers,
            policy=config.policy,
            metrics=app[METRICS],
            # auto-pipelining on the client this app opened itself (a real Redis)
            pipelining=redis_client is None and not config.redis.cluster,
        )
        up = config.upstream
        upstream = Upstream(
            up.url,
            connect_timeout_s=up.connect_timeout_s,
            read_timeout_s=up.read_timeout_s,
            max_connections=up.max_connections,
        )
        # outgoing calls other than the API's (payment provider, webhooks)
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=up.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        payments = Payments(config.payments, store, app[METRICS], session)
        app[STORE] = store
        app[UPSTREAM] = upstream
        app[PAYMENTS] = payments
        journal = Journal(config.policy.journal_dir, app[METRICS])
        app[LEDGER] = ledger = LazyLedger(config.ledger.database_url)
        app[METER] = meter = Meter(config, store, app[METRICS], payments, journal)
        # journals left by this or an earlier process are replayed as soon as Redis answers
        replayer = asyncio.create_task(journal.run(meter.replay, store.ping))
        flusher = asyncio.create_task(_flush_metrics(app[METRICS]))
        try:
            await store.load_scripts()
        except StoreUnavailable:
            log.warning("redis not reachable at start; /readyz will report it")
        yield
        await meter.drain()  # settlements still under way
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        app[METRICS].flush()
        access_log.flush()
        replayer.cancel()
        await asyncio.gather(replayer, return_exceptions=True)
        journal.close()
        await ledger.close()
        await payments.close()
        await session.close()
        await upstream.close()
        if store.pipeliner is not None:
            await store.pipeliner.close()
        if redis_client is None:
            await client.aclose()

    app.cleanup_ctx.append(resources)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", passthrough)
    app.router.add_get("/v1/models", passthrough)
    app.router.add_get("/v1/models/{model}", passthrough)
    app.router.add_route("HEAD", "/", head_root)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/admin", admin_page)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_static("/admin/static", STATIC)
    app.add_routes(member_routes.routes)
    app.add_routes(orgs.routes)
    app.add_routes(extra_usage.routes)
    app.add_routes(billing.routes)
    app.add_routes(requests.routes)
    app.add_routes(check_api.routes)
    app.router.add_route("*", "/v1/{tail:.*}", refuse_unmetered)
    return app
