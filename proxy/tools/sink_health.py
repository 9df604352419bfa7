"""The ledger sink's own small HTTP server (``ledger-sink --metrics-port``): ``/metrics`` for
Prometheus and ``/healthz`` for a liveness probe — 200 while passes complete, 503 once none
has for a while (the sink keeps trying through outages, so it is alive but not working)."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from proxy.obs.metrics import SinkMetrics

SINK_METRICS = web.AppKey("sink_metrics", SinkMetrics)
STALE_AFTER = web.AppKey("stale_after_s", float)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[SINK_METRICS].render(),
        headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def _healthz(request: web.Request) -> web.Response:
    last = request.app[SINK_METRICS].last_pass_at
    age = time.time() - last if last else None
    stale = request.app[STALE_AFTER]
    ok = age is not None and age <= stale
    body = {"status": "ok" if ok else "stalled", "last_pass_age_s": age, "stale_after_s": stale}
    return web.Response(
        status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json"
    )


def sink_app(metrics: SinkMetrics, interval_s: float) -> web.Application:
    app = web.Application()
    app[SINK_METRICS] = metrics
    # no pass for ten intervals, and at least a minute (a first pass over many orgs, or
    # backoff through a short outage): the sink is stalled
    app[STALE_AFTER] = max(60.0, 10 * interval_s)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def serve_sink_metrics(
    metrics: SinkMetrics, host: str, port: int, interval_s: float
) -> web.AppRunner | None:
    """Serve the sink's ``/metrics`` and ``/healthz`` on ``port`` (0: not served)."""
    if not port:
        return None
    runner = web.AppRunner(sink_app(metrics, interval_s), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
