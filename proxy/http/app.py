"""Builds the aiohttp application: the routes, and every resource in a ``cleanup_ctx`` of
its own under a typed ``AppKey``.

aiohttp opens the contexts in order and closes them in reverse, attempting every close even
when one fails and reporting each error (``CleanupError``), so a resource is closed after
everything that uses it: the settlements still under way first (with the journal's
replayer), then the metrics and access-log flush, payments, the ledger, the upstream
client, and the store last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from proxy.config import Config
from proxy.core.errors import ProxyError, StoreUnavailable
from proxy.core.vocabulary import page_table
from proxy.http import check_api, member_routes
from proxy.http.admin import billing, extra_usage, orgs, requests
from proxy.http.appkeys import (
    ACCESS_LOG,
    CONFIG,
    DECODED,
    DRAINING,
    LEDGER,
    METER,
    METRICS,
    PAYMENTS,
    SLOTS,
    STORE,
    TRACING,
    UPSTREAM,
)
from proxy.http.body import DecodedBodies
from proxy.http.middleware import errors_middleware
from proxy.http.openapi import document
from proxy.http.proxy_routes import head_root, messages, passthrough, refuse_unmetered
from proxy.ledger.db import LazyLedger
from proxy.metering.journal import Journal
from proxy.metering.meter import Meter
from proxy.metering.payments import Payments
from proxy.obs.logs import AccessLog
from proxy.obs.metrics import Metrics
from proxy.obs.tracing import Tracing
from proxy.storage.store import RedisClient, Store, make_client
from proxy.upstream.client import Upstream
from proxy.upstream.slots import OrgSlots

log = logging.getLogger(__name__)

Context = Callable[[web.Application], AsyncIterator[None]]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# the supervisor of ``serve --workers N`` writes "<alive> <expected>" here as workers come
# and go: a pod serves at full strength only with every worker alive
WORKERS_FILE = "EUP_WORKERS_FILE"


def workers_alive() -> tuple[int, int] | None:
    path = os.environ.get(WORKERS_FILE)
    if not path:
        return None
    try:
        alive, expected = Path(path).read_text().split()
        return int(alive), int(expected)
    except (OSError, ValueError):
        return None


async def readyz(request: web.Request) -> web.Response:
    """Whether this pod should get traffic: not while it drains, not while a worker is down
    (a replacement is on its way). Redis unavailable takes it out only under fail_closed on a
    single Redis — under fail_open the pod serves through the outage, and on a Cluster one
    master's trouble is not every org's — and the body says so either way."""
    app = request.app
    if app[DRAINING].is_set():
        return web.json_response({"status": "draining"}, status=503)
    doc: dict[str, object] = {"status": "ready"}
    workers = workers_alive()
    if workers is not None:
        doc["workers"] = f"{workers[0]}/{workers[1]}"
        if workers[0] < workers[1]:
            return web.json_response({**doc, "status": "degraded"}, status=503)
    try:
        await app[STORE].ping()
        await app[STORE].load_scripts()
    except ProxyError as err:
        config = app[CONFIG]
        doc.update(redis="unavailable", reason=err.message, fail_mode=config.policy.fail_mode)
        if config.policy.fail_mode != "open" and not config.redis.cluster:
            return web.json_response({**doc, "status": "unavailable"}, status=503)
    return web.json_response(doc)


STATIC = Path(__file__).parent.parent / "static"


async def admin_page(request: web.Request) -> web.FileResponse:
    """GET /admin: "Admin settings > Usage" (plain HTML and an ES module, no build step)."""
    return web.FileResponse(STATIC / "admin.html", headers={"cache-control": "no-store"})


async def vocabulary_module(request: web.Request) -> web.Response:
    """GET /admin/vocabulary.js: the product's words as an ES module the pages import (plans,
    roles, reasons and how people read them), made from ``proxy.core.vocabulary``: the
    pages hold no copy of them."""
    return web.Response(
        body=VOCABULARY_JS,
        content_type="text/javascript",
        headers={"cache-control": "no-cache"},
    )


VOCABULARY_JS = (
    b"// generated from proxy/core/vocabulary.py (page_table): the product's words\n"
    b"export default Object.freeze(" + orjson.dumps(page_table()) + b");\n"
)


async def usage_page(request: web.Request) -> web.FileResponse:
    """GET /usage: a member's own usage (signs in with their proxy key; plain HTML, no build)."""
    return web.FileResponse(STATIC / "usage.html", headers={"cache-control": "no-store"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(),
        headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def _close_tracing(app: web.Application) -> None:
    await asyncio.to_thread(app[TRACING].close)  # its exporter may wait on the network


def metrics_app(app: web.Application) -> web.Application:
    """``/metrics`` of ``app`` alone, for ``server.metrics_port``: scraped on a port of its
    own (a cluster's network policy can keep it from members), not on the members' port."""
    metrics = web.Application(middlewares=[errors_middleware])
    metrics[CONFIG] = app[CONFIG]
    metrics[METRICS] = app[METRICS]
    metrics[ACCESS_LOG] = AccessLog(None)
    metrics.router.add_get("/metrics", metrics_handler)
    return metrics


async def _every(seconds: float, work: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        work()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _store_ctx(config: Config, redis_client: RedisClient | None) -> Context:
    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = Store(
            redis_client or make_client(config.redis),
            prefix=config.redis.key_prefix,
            tiers=config.tiers,
            policy=config.policy,
            metrics=app[METRICS],
            # auto-pipelining on the client this app opened itself (a real Redis or Cluster)
            pipelining=redis_client is None,
            owns_client=redis_client is None,
        )
        app[STORE] = store
        try:
            await store.load_scripts()
        except StoreUnavailable:
            log.warning("redis not reachable at start; /readyz will report it")
        yield
        await store.close()

    return store_ctx


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    up = app[CONFIG].upstream
    app[UPSTREAM] = upstream = Upstream(
        up.url,
        connect_timeout_s=up.connect_timeout_s,
        read_timeout_s=up.read_timeout_s,
        max_connections=up.max_connections,
    )
    app[SLOTS] = OrgSlots(up.max_connections_per_org)
    yield
    await upstream.close()


async def _payments_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    # outgoing calls other than the API's (payment provider, webhooks)
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=config.upstream.connect_timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    try:
        app[PAYMENTS] = payments = Payments(config.payments, app[STORE], app[METRICS], session)
        yield
        await payments.close()
    finally:
        await session.close()


async def _ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    app[LEDGER] = ledger = LazyLedger(app[CONFIG].ledger.database_url)
    yield
    await ledger.close()


async def _meter_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    journal = Journal(config.policy.journal_dir, app[METRICS], config.policy.journal_in_flight)
    journal.open()  # where this process records its requests in flight
    app[METER] = meter = Meter(config, app[STORE], app[METRICS], app[PAYMENTS], journal)
    ledger = app[LEDGER]

    async def ledger_has(org: str, op_id: str) -> bool:
        return await (await ledger.get()).has_op(org, op_id)

    meter.ledger_has = ledger_has
    # journals left by dead processes (usage to charge, requests they had in flight) and
    # this process's own usage lines are replayed as soon as Redis answers
    replayer = asyncio.create_task(
        journal.run(meter.replay, app[STORE].ping, recover=meter.recover)
    )
    leases = asyncio.create_task(meter.renew())
    try:
        yield
        await meter.drain()  # settlements still under way
    finally:
        await _cancel(leases)
        await _cancel(replayer)
        journal.close()


async def _flush_ctx(app: web.Application) -> AsyncIterator[None]:
    """Hot-path counts reach the metric series once a second (and before each scrape): with
    ``--workers`` another worker may answer the scrape. The access log's last lines too."""
    metrics, access_log = app[METRICS], app[ACCESS_LOG]
    flusher = asyncio.create_task(_every(1.0, metrics.flush))
    yield
    await _cancel(flusher)
    metrics.flush()
    access_log.flush()


def build_app(
    config: Config,
    *,
    redis_client: RedisClient | None = None,
    metrics: Metrics | None = None,
    access_log_fd: int | None = 2,
) -> web.Application:
    """The proxy application. ``redis_client`` lets the demo bring an embedded Redis (it is
    not closed here); ``access_log_fd=None`` turns the per-request lines off (the demo prints
    its own)."""
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[errors_middleware],
        # bodies are decoded by proxy.http.body, within the limit (aiohttp's decoding is not
        # bounded, and would leave the Content-Encoding on a decoded body)
        handler_args={
            "auto_decompress": False,
            "keepalive_timeout": config.server.keepalive_timeout_s,
        },
    )
    app[CONFIG] = config
    app[METRICS] = metrics or Metrics(org_labels=config.metrics.org_labels)
    app[ACCESS_LOG] = AccessLog(access_log_fd)
    app[DECODED] = DecodedBodies(config.server.max_decoded_bytes_in_flight)
    app[DRAINING] = asyncio.Event()
    app[TRACING] = Tracing(config.tracing.otlp_endpoint, config.tracing.service_name)
    app.on_cleanup.append(_close_tracing)
    # opened in this order, closed in the reverse
    app.cleanup_ctx.extend(
        [
            _store_ctx(config, redis_client),
            _upstream_ctx,
            _ledger_ctx,
            _payments_ctx,
            # closed after the meter: the settlements it drains write metrics and log lines
            _flush_ctx,
            _meter_ctx,
        ]
    )
    _routes(app)
    return app


def _routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", passthrough)
    app.router.add_get("/v1/models", passthrough)
    app.router.add_get("/v1/models/{model}", passthrough)
    app.router.add_route("HEAD", "/", head_root)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if not app[CONFIG].server.metrics_port:  # else on a port of its own (metrics_app)
        app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/admin", admin_page)
    app.router.add_get("/usage", usage_page)
    app.router.add_get("/admin/vocabulary.js", vocabulary_module)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_static("/admin/static", STATIC)
    app.add_routes(member_routes.routes)
    app.add_routes(orgs.routes)
    app.add_routes(extra_usage.routes)
    app.add_routes(billing.routes)
    app.add_routes(requests.routes)
    app.add_routes(check_api.routes)
    app.router.add_route("*", "/v1/{tail:.*}", refuse_unmetered)
