"""Admin API, billing records: statements (JSON and CSV), usage by member for a period, and
a month's extra usage by day. Each handler parses, calls ``proxy.admin.reports``, renders."""

from __future__ import annotations

from aiohttp import web

from proxy.admin import reports
from proxy.core.statements import statement_csv
from proxy.http.admin.common import actor, org_id, page_size
from proxy.http.appkeys import CONFIG, LEDGER, STORE

routes = web.RouteTableDef()


async def _statement(request: web.Request) -> tuple[str, str, dict[str, object]]:
    org, period = org_id(request), request.match_info["period"]
    app = request.app
    doc = await reports.statement(
        app[STORE], app[LEDGER], await actor(request), app[CONFIG].ledger.close_after_s, org, period
    )
    return org, period, doc


@routes.get(r"/admin/v1/orgs/{org}/statements/{period:\d{4}-\d{2}}")
async def get_statement(request: web.Request) -> web.Response:
    return web.json_response((await _statement(request))[2])


@routes.get(r"/admin/v1/orgs/{org}/statements/{period:\d{4}-\d{2}}.csv")
async def get_statement_csv(request: web.Request) -> web.Response:
    org, period, doc = await _statement(request)
    return web.Response(
        text=statement_csv(doc),
        content_type="text/csv",
        headers={"content-disposition": f'attachment; filename="statement-{org}-{period}.csv"'},
    )


@routes.get("/admin/v1/orgs/{org}/usage")
async def usage(request: web.Request) -> web.Response:
    """Spend by member for a period: month to date from Redis, earlier months from the ledger."""
    org = org_id(request)
    app = request.app
    view = await reports.usage(
        app[STORE],
        app[LEDGER],
        await actor(request),
        app[CONFIG].tiers,
        org,
        request.query.get("period"),
    )
    return web.json_response(view)


@routes.get("/admin/v1/orgs/{org}/usage/daily")
async def daily(request: web.Request) -> web.Response:
    """A month's extra usage by day, from the durable ledger."""
    org = org_id(request)
    app = request.app
    view = await reports.daily(
        app[STORE], app[LEDGER], await actor(request), org, request.query.get("period")
    )
    return web.json_response(view)


@routes.get("/admin/v1/orgs/{org}/extra-usage/credits")
async def credits(request: web.Request) -> web.Response:
    """Team's purchases and reloads of all time, newest first, a page at a time (the ledger)."""
    org = org_id(request)
    view = await reports.credit_history(
        request.app[LEDGER],
        await actor(request),
        org,
        page_size(request, 50, reports.MAX_CREDITS),
        request.query.get("cursor"),
    )
    return web.json_response(view)
