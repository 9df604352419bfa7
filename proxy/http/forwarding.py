"""Forwarding an admitted request's answer to the member, and settling it.

Responses come back unmodified apart from the unified rate-limit headers (and a gzip or
deflate body, which ``proxy.upstream.client`` decodes to read the usage, comes back decoded
without its ``Content-Encoding``). Streams are forwarded chunk by chunk as they arrive, each
metered before the member gets it. The charge is written to Redis before the member sees the
end of the answer (the last bytes of a body, the terminating chunk of a stream): their next
request is admitted after it.

Whatever cuts an answer after the API's 200 — the API, or the member going away (which
cancels the handler: ``proxy.http.server.wait_for_api``, on for the whole exchange) — the
upstream request is closed at once and the charge is what the API reported, completed by
the estimate rule of ``proxy.core.usage`` and marked estimated; nothing received, nothing
charged (the reservation is released).
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
from proxy.core.ids import MODEL_ID
from proxy.core.pricing import Usage
from proxy.core.usage import StreamUsage, body_usage
from proxy.http.appkeys import ACCESS_LOG, CONFIG, METER, METRICS, TRACING
from proxy.http.auth import ProxyKey
from proxy.http.headers import response_headers
from proxy.http.middleware import LoggedResponse, LoggedStreamResponse
from proxy.metering.journal import InFlight
from proxy.storage.scripts import Reply
from proxy.storage.store import NOT_SENT
from proxy.upstream.client import Response, UpstreamError

# bytes waiting in the member's connection (with the chunk) from which a stream's write is
# timed: the transport pauses at 64 KiB, so only a write that takes it there can wait
WRITE_BACKLOG = 64 * 1024


class Metered:
    """One metered request on its way: who, what, and what admission decided (``adm`` is
    None when it runs unmetered under fail_open); once answered, what it is settled on."""

    __slots__ = (
        "adm",
        "app",
        "extra",
        "flight",
        "key",
        "max_tokens",
        "model",
        "org",
        "prompt_bytes",
        "rid",
        "sent_at",
        "settling_at",
        "started",
        "status",
        "upstream_id",
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
        prompt_bytes: int = 0,
        max_tokens: int | None = None,
    ) -> None:
        self.app, self.rid, self.key, self.org, self.model, self.adm = (
            app,
            rid,
            key,
            key.org,
            model,
            adm,
        )
        self.prompt_bytes = prompt_bytes  # the request body's size: the estimate's input
        self.max_tokens = max_tokens  # the most output an estimate may count
        self.upstream_id: str | None = None  # the API's request-id for it, once it answered
        self.settling_at = started  # perf_counter() when its settlement was sent
        self.started = started  # perf_counter() on arrival
        self.sent_at = started  # perf_counter() when it went upstream
        self.status = 0
        self.usage = Usage()
        self.extra: dict[str, Any] = {}
        self.flight: InFlight | None = None  # its record in the journal, once sent upstream

    def send(self) -> None:
        """It goes upstream now: recorded in the journal (a killed worker's requests in flight
        are charged from it)."""
        self.flight = self.app[METER].journal.begin(
            self.rid, self.org, self.key.secret_hash, self.model, self.prompt_bytes, self.max_tokens
        )
        # every admitted request: its record in Redis outlives it only by the replay window,
        # so a long one keeps it (and an extra-usage reservation) alive while it runs
        self.flight.lease = self.adm is not None

    def body_came(self, usage: Usage | None, estimated: bool) -> None:
        """A JSON answer's usage (whole, or as estimated from what came): in the journal at
        the end of this turn."""
        if self.flight is not None and usage is not None:
            self.flight.usage, self.flight.est = usage, estimated
            self.app[METER].journal.touched(self.flight)

    def done(self) -> None:
        if self.flight is not None:
            self.app[METER].journal.end(self.rid)

    @property
    def member(self) -> str | None:
        return self.adm["member"] if self.adm is not None else None

    def settled(self, result: Reply | None) -> None:
        """Its settlement is done (``result`` None: journaled, or refused): metrics and the
        request's line."""
        self.done()
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
            upstream_request_id=self.upstream_id,
            **self.extra,
        )
        tracing = app[TRACING]
        if tracing.on:
            tracing.request(
                {
                    "eup.request_id": self.rid,
                    "eup.org": self.org,
                    "eup.mode": mode,
                    "eup.model": model,
                    "eup.cost_nano": cost or "",
                    "http.status": self.status,
                },
                self.started,
                self.sent_at,
                self.settling_at,
                time.perf_counter(),
            )


def out_headers(upstream: Response, m: Metered) -> CIMultiDict[str]:
    """The API's headers as the member gets them, with the proxy's request id (the one its
    access line and any error carry) beside the API's own ``request-id``."""
    out = response_headers(upstream.headers)
    m.upstream_id = upstream.headers.get("request-id")
    out["x-request-id"] = m.rid
    if m.adm is not None:
        out.update(unified_headers(m.adm))
    return out


async def release(app: web.Application, m: Metered) -> None:
    """Nothing was served: give the reservation back."""
    if m.adm is not None:
        await app[METER].release(m.org, m.rid)
    m.done()


def settle_and_log(
    app: web.Application,
    m: Metered,
    usage: Usage,
    status: int,
    model: str | None = None,
    estimated: bool = False,
    **extra: Any,
) -> tuple[asyncio.Task[Any], Awaitable[bool]]:
    """Settle (or under fail_open journal the usage durably); the request's line is written
    once that is done (``Metered.settled``), from its own task. The second value resolves
    True once the settlement is written to Redis: the member may then see the end of the
    answer; on False the caller waits for the task. ``estimated``: the usage is (in part)
    the estimate rule's, and the charge is marked so."""
    meter = app[METER]
    m.settling_at = time.perf_counter()
    m.usage, m.status, m.extra = usage, status, extra
    if estimated:
        m.extra["estimated"] = True
    if model and MODEL_ID.match(model):  # the API's own id, when it is one a ledger can keep
        m.model = model
    if m.adm is None:
        task = meter.journaled(
            m.org, m.rid, m.key.secret_hash, m.model, usage, m.settled, estimated=estimated
        )
        return task, NOT_SENT
    return meter.settle(
        m.org,
        m.rid,
        m.model,
        usage,
        key_hash=m.key.secret_hash,
        policy=m.adm["policy"],
        then=m.settled,
        estimated=estimated,
    )


def settle_cut(
    app: web.Application,
    m: Metered,
    usage: Usage | None,
    status: int,
    model: str | None,
    estimated: bool,
    **extra: Any,
) -> None:
    """Settle an answer that did not end as the API meant it to (cut by the API or by the
    member): on what came, or, when nothing came (``usage`` None), release — nothing
    received, nothing charged."""
    if usage is not None:
        settle_and_log(app, m, usage, status, model, estimated, **extra)
        return
    app[METER].track(release(app, m))  # in a task of its own: the caller may be cancelled
    app[ACCESS_LOG].request(
        request_id=m.rid,
        org=m.org,
        member=m.member,
        mode="released",
        status=status,
        cost="0",
        started=m.started,
        **extra,
    )


async def forward_error(request: web.Request, upstream: Response, m: Metered) -> web.StreamResponse:
    """Upstream error before any byte: release, charge nothing, forward the error unmodified."""
    app = request.app
    try:
        body = await upstream.read()
    except UpstreamError as exc:
        await release(app, m)
        raise UpstreamUnavailable("the Anthropic API response was cut short") from exc
    except asyncio.CancelledError:  # the member went away
        upstream.close()
        app[METER].track(release(app, m))
        raise
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
        upstream_request_id=upstream.headers.get("request-id"),
    )
    headers = response_headers(upstream.headers)  # as the API sent them, and the proxy's id
    headers["x-request-id"] = m.rid
    return LoggedResponse(status=upstream.status, body=body, headers=headers)


async def forward_body(request: web.Request, upstream: Response, m: Metered) -> web.StreamResponse:
    """A whole JSON answer: read, settled, then sent. Cut short after the API's 200, by the
    API (the member gets a 502) or by the member going away, it is charged on what came."""
    app = request.app
    parts: list[bytes] = []
    flight, journal = m.flight, app[METER].journal
    if flight is not None:
        flight.body = parts  # what came, for the journal (a worker killed mid-body)
    try:
        async for chunk in upstream.chunks():
            parts.append(chunk)
            if flight is not None and not upstream.finished:
                journal.touched(flight)  # more to come: what came so far is recorded
        body = parts[0] if len(parts) == 1 else b"".join(parts)
    except UpstreamError as exc:
        _body_cut(app, m, parts, "mid_body", 502, "upstream_broken")
        err = UpstreamUnavailable("the Anthropic API response was cut short")
        err.logged = True  # its line is the settlement's
        raise err from exc
    except asyncio.CancelledError:  # the member went away: stop paying for it at once
        upstream.close()
        _body_cut(app, m, parts, "member_gone", 499, "client_disconnected")
        raise
    usage, model, est = body_usage(body, m.prompt_bytes, m.max_tokens)
    m.body_came(usage, est)
    settling, sent = settle_and_log(app, m, usage or Usage(), upstream.status, model, est)
    if await sent:
        m.done()  # the settlement is out: nothing to recover if this worker dies now
    else:
        await asyncio.shield(settling)
    # the settlement writes the line
    return LoggedResponse(status=upstream.status, body=body, headers=out_headers(upstream, m))


def _body_cut(
    app: web.Application, m: Metered, parts: list[bytes], kind: str, status: int, outcome: str
) -> None:
    """A JSON answer cut short: counted, and charged on what came of it."""
    app[METRICS].upstream_errors.labels(kind).inc()
    usage, model, est = body_usage(b"".join(parts), m.prompt_bytes, m.max_tokens)
    m.body_came(usage, est)
    settle_cut(app, m, usage, status, model, est, stream=outcome)


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
    flight, journal = m.flight, app[METER].journal
    write_timeout_s = app[CONFIG].server.write_timeout_s
    if flight is not None:
        flight.seen = seen
    try:
        await resp.prepare(request)
        async for chunk in upstream.chunks():
            # metered before the member has it (a write that fails is paid), and in the
            # journal with this turn's group commit (a killed worker's member was sent
            # nothing the journal does not have)
            seen.feed(chunk)
            if flight is not None:
                journal.touched(flight)
            transport = request.transport
            if (
                transport is not None
                and transport.get_write_buffer_size() + len(chunk) >= WRITE_BACKLOG
            ):
                # the member is not reading: a write may wait, but not for ever (the org's
                # upstream slot is held meanwhile)
                async with asyncio.timeout(write_timeout_s):
                    await resp.write(chunk)
            else:
                await resp.write(chunk)
        outcome = "upstream_error_event" if seen.errored else outcome
        settling, sent = settle_and_log(
            app,
            m,
            seen.usage(m.prompt_bytes, m.max_tokens),
            upstream.status,
            seen.model,
            seen.estimated,
            stream=outcome,
        )
        settled = True
        if await sent:
            m.done()  # the settlement is out: nothing to recover if this worker dies now
        else:
            await asyncio.shield(settling)
        await resp.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        # the client went away: stop paying for tokens nobody reads
        outcome = "client_disconnected"
        upstream.close()
    except TimeoutError:  # the member stopped reading: gone, as far as the API is concerned
        outcome = "write_timeout"
        metrics.write_timeouts.inc()
        upstream.close()
        if request.transport is not None:
            request.transport.close()
    except UpstreamError:
        outcome = "upstream_broken"
        metrics.upstream_errors.labels("mid_stream").inc()
        upstream.close()
        if request.transport is not None:
            request.transport.close()
    except asyncio.CancelledError:  # the member went away while the API was silent
        outcome = "client_disconnected"
        upstream.close()
        if not settled:
            metrics.upstream_errors.labels("member_gone").inc()
        raise
    finally:
        metrics.active_streams.dec()
        if not settled:
            usage = seen.usage(m.prompt_bytes, m.max_tokens) if seen.received else None
            settle_cut(app, m, usage, upstream.status, seen.model, seen.estimated, stream=outcome)
    return resp
