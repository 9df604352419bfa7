"""The member's own routes, with their proxy key: usage status and extra-usage consent."""

from __future__ import annotations

from aiohttp import web

from proxy.admin import members
from proxy.core.admission import Admission
from proxy.core.decision import status_document
from proxy.core.errors import ProxyError
from proxy.core.refusals import Context, refusal_error
from proxy.core.statusline import status_line
from proxy.core.validate import boolean, only
from proxy.http.appkeys import STORE, VERIFIED
from proxy.http.auth import member_actor_of_key, proxy_key
from proxy.http.body import json_object
from proxy.http.middleware import new_request_id
from proxy.storage.store import BY_MEMBER_ID, PROXY_KEY, Store, StoreRefusal

routes = web.RouteTableDef()


async def member_status(
    store: Store, org: str, *, who: str, credential: str, context: str = Context.PROXY
) -> Admission:
    """The member's windows, mode and limits: admit.lua asked not to reserve. A refusal is
    the error of ``context`` (the member's own key, or the check API naming a member)."""
    try:
        return await store.admit(
            org,
            new_request_id(),
            who=who,
            credential=credential,
            max_cost=0,
            est_cost=0,
            reserve=False,
        )
    except StoreRefusal as exc:
        member = credential if who == BY_MEMBER_ID else ""  # never a key's hash
        raise refusal_error(context, exc.code, exc.detail, org=org, member=member) from exc


@routes.get("/v1/usage/me")
async def usage_me(request: web.Request) -> web.Response:
    key = proxy_key(request)
    a = await member_status(request.app[STORE], key.org, who=PROXY_KEY, credential=key.secret_hash)
    request[VERIFIED] = True
    return web.json_response({"org_id": key.org, **status_document(a)})


@routes.get("/v1/usage/me/statusline")
async def statusline(request: web.Request) -> web.Response:
    """One plain-text line for Claude Code's ``statusLine`` command: one read-only script
    call, cheap enough every few seconds. An error is a line too (its message), so that the
    status line says why it cannot show the usage."""
    try:
        key = proxy_key(request)
        a = await member_status(
            request.app[STORE], key.org, who=PROXY_KEY, credential=key.secret_hash
        )
    except ProxyError as err:
        return web.Response(text=f"usage: {err.message}\n", status=err.status)
    request[VERIFIED] = True
    return web.Response(text=status_line(a) + "\n", headers={"cache-control": "no-store"})


@routes.post("/v1/usage/me/extra-usage")
async def consent(request: web.Request) -> web.Response:
    """The member accepts (or, with {"accept": false}, withdraws) continuing on extra usage."""
    store = request.app[STORE]
    who = await member_actor_of_key(store, request)
    doc = await json_object(request, allow_empty=True)
    only(doc, {"accept"})
    accept = bool(boolean(doc, "accept", required=False, default=True))
    return web.json_response(await members.consent(store, who, accept))
