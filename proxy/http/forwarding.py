"""Forwarding an admitted request's answer to the member, and settling it.

Responses come back unmodified apart from the unified rate-limit headers (and a gzip or
deflate body, which ``proxy.upstream.client`` decodes to read the usage, comes back decoded
without its ``Content-Encoding``). Streams are forwarded chunk by chunk as they arrive. The
charge is written to Redis before the member sees the end of the answer (the last bytes of a
body, the terminating chunk of a stream): their next request is admitted after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.core.admission import Admission
from proxy.core.decision import unified_headers
from proxy.core.errors import UpstreamUnavailable
from proxy.core.pricing import Usage
from proxy.core.usage import StreamUsage, response_usage
from proxy.http.appkeys import ACCESS_LOG, METER, METRICS
from proxy.http.auth import ProxyKey
from proxy.http.headers import response_headers
from proxy.http.middleware import LoggedResponse, LoggedStreamResponse
from proxy.storage.scripts import Reply
from proxy.storage.store import NOT_SENT
from proxy.upstream.client import Response, UpstreamError


class Metered:
    """One metered request on its way: who, what, and what admission decided (``adm`` is
    None when it runs unmetered under fail_open); once answered, what it is settled on."""

    __slots__ = (
        "adm",
        "app",
        "extra",
        "key",
        "model",
        "org",
        "rid",
        "sent_at",
        "started",
        "status",
        "usage",
    )

    def __init__(
        self,
        app: web.Application,
        rid: str,
        key: ProxyKey,
        model: str,
        adm: Admission | None,
        started: float,
    ) -> None:
        self.app, self.rid, self.key, self.org, self.model, self.adm = (
            app,
            rid,
            key,
            key.org,
            model,
            adm,
        )
        self.started = started  # perf_counter() on arrival
        self.sent_at = started  # perf_counter() when it went upstream
        self.status = 0
        self.usage = Usage()
        self.extra: dict[str, Any] = {}

    @property
    def member(self) -> str | None:
        return self.adm["member"] if self.adm is not None else None

    def settled(self, result: Reply | None) -> None:
        """Its settlement is done (``result`` None: journaled, or refused): metrics and the
        request's line."""
        app, model = self.app, self.model
        if self.adm is None:
            cost: str | None = str(app[METER].prices.cost(model, self.usage))
            mode = "journaled"
        else:
            cost = result["cost"] if result else None
            mode = self.adm["mode"]
        metrics = app[METRICS]
        metrics.h_upstream_latency.observe(time.perf_counter() - self.sent_at)
        metrics.child(metrics.requests, "messages", str(self.status)).inc()
        app[ACCESS_LOG].request(
            request_id=self.rid,
            org=self.org,
            member=self.member,
            mode=mode,
            model=model,
            cost=cost,
            status=self.status,
            started=self.started,
            **self.extra,
        )


def out_headers(upstream: Response, m: Metered) -> CIMultiDict[str]:
    out = response_headers(upstream.headers)
    if m.adm is not None:
        out.update(unified_headers(m.adm))
    return out


async def release(app: web.Application, m: Metered) -> None:
    """Nothing was served: give the reservation back."""
    if m.adm is not None:
        await app[METER].release(m.org, m.rid)


def settle_and_log(
    app: web.Application,
    m: Metered,
    usage: Usage,
    status: int,
    model: str | None = None,
    **extra: Any,
) -> tuple[asyncio.Task[Any], Awaitable[bool]]:
    """Settle (or under fail_open journal the usage durably); the request's line is written
    once that is done (``Metered.settled``), from its own task. The second value resolves
    True once the settlement is written to Redis: the member may then see the end of the
    answer; on False the caller waits for the task."""
    meter = app[METER]
    m.usage, m.status, m.extra = usage, status, extra
    if model:
        m.model = model
    if m.adm is None:
        task = meter.journaled(m.org, m.rid, m.key.secret_hash, m.model, usage, m.settled)
        return task, NOT_SENT
    return meter.settle(
        m.org,
        m.rid,
        m.model,
        usage,
        key_hash=m.key.secret_hash,
        policy=m.adm["policy"],
        then=m.settled,
    )


async def forward_error(request: web.Request, upstream: Response, m: Metered) -> web.StreamResponse:
    """Upstream error before any byte: release, charge nothing, forward the error unmodified."""
    app = request.app
    body = await read_all(app, upstream, m)
    await release(app, m)
    app[METRICS].upstream_errors.labels(str(upstream.status)).inc()
    app[METRICS].requests.labels("messages", str(upstream.status)).inc()
    app[ACCESS_LOG].request(
        request_id=m.rid,
        org=m.org,
        member=m.member,
        mode="released",
        status=upstream.status,
        cost="0",
        started=m.started,
    )
    return LoggedResponse(
        status=upstream.status, body=body, headers=response_headers(upstream.headers)
    )


async def read_all(app: web.Application, upstream: Response, m: Metered) -> bytes:
    """The whole response body; cut short, the reservation is released (nothing is charged)
    and the member gets a 502."""
    try:
        return await upstream.read()
    except UpstreamError as exc:
        await release(app, m)
        raise UpstreamUnavailable("the Anthropic API response was cut short") from exc


async def forward_body(request: web.Request, upstream: Response, m: Metered) -> web.StreamResponse:
    body = await read_all(request.app, upstream, m)
    usage, model = response_usage(body)
    settling, sent = settle_and_log(request.app, m, usage or Usage(), upstream.status, model)
    if not await sent:
        await asyncio.shield(settling)
    # the settlement writes the line
    return LoggedResponse(status=upstream.status, body=body, headers=out_headers(upstream, m))


async def forward_stream(
    request: web.Request, upstream: Response, m: Metered
) -> web.StreamResponse:
    app = request.app
    metrics = app[METRICS]
    seen = StreamUsage()
    # the settlement writes the line, whatever happens below
    resp = LoggedStreamResponse(status=upstream.status, headers=out_headers(upstream, m))
    outcome = "complete"
    settled = False
    metrics.active_streams.inc()
    try:
        await resp.prepare(request)
        async for chunk in upstream.chunks():
            await resp.write(chunk)  # forward first: parsing for usage must not delay it
            seen.feed(chunk)
        outcome = "upstream_error_event" if seen.errored else outcome
        settling, sent = settle_and_log(
            app, m, seen.usage(), upstream.status, seen.model, stream=outcome
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
            settle_and_log(app, m, seen.usage(), upstream.status, seen.model, stream=outcome)
    return resp
