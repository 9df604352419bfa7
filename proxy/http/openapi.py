"""The OpenAPI 3.1 document of the check and admin APIs, served at /openapi.json and kept in
the repository as openapi.json (a test keeps the two identical)."""

from __future__ import annotations

import re
from typing import Any

from proxy.admin.audit import CURSOR as AUDIT_CURSOR
from proxy.admin.audit import MAX_ENTRIES
from proxy.admin.reports import CREDIT_CURSOR, MAX_CREDITS
from proxy.core.vocabulary import Consent, Decision, Mode, Plan, Policy, RequestState, Role, Scope

USD = {"type": "string", "pattern": r"^-?\d+\.\d{2,9}$", "description": "USD, decimal string"}
USD_OR_NULL = {"oneOf": [USD, {"type": "null"}]}
AMOUNT_IN = {
    "oneOf": [
        {
            "type": "string",
            "pattern": r"^(0|[1-9][0-9]{0,5})(\.[0-9]{1,2})?$",
            "examples": ["100.00"],
        },
        {"type": "integer", "minimum": 0, "maximum": 999999},
    ],
    "description": "USD in whole cents as a decimal string (at most 2 decimals) or whole dollars",
}
POSITIVE_IN = {
    "oneOf": [
        {"type": "string", "pattern": r"^[1-9][0-9]{0,5}(\.[0-9]{1,2})?$"},
        {"type": "integer", "minimum": 1, "maximum": 999999},
    ],
    "description": "a positive USD amount",
}
LIMIT_IN = {
    "oneOf": [AMOUNT_IN, {"type": "null"}],
    "description": "an amount, or null for unlimited",
}
TEXT = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "[^ \t\r\n]"}
# an org's upstream credential: a variable under the default upstream.credential_prefix
ENV = {"type": "string", "pattern": "^UPSTREAM_API_KEY_[A-Za-z0-9_]{1,100}$"}
TIER = {"enum": ["standard", "premium"]}
COUNT = {"type": "integer", "minimum": 0, "maximum": 1_000_000_000_000}
ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
MEMBER = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"}
ANY = {"type": "object"}
RSV = {"type": "string", "pattern": "^rsv_[A-Za-z0-9_-]{1,1000}$"}


def obj(props: dict[str, Any], required: list[str] | None = None, **more: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or [], **more}


# the body of a call that names only its reservation (release, renew)
ONLY_RESERVATION = obj({"reservation_id": RSV}, ["reservation_id"], additionalProperties=False)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERRORS = {
    "400": "the input is wrong; the message names the field",
    "401": "no or unknown token",
    "403": "the role may not do this",
    "404": "no such organization, member or resource (or not yours)",
    "409": "conflicts with the current state (plan, primary owner, replay with other data)",
}


def op(
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    security: str = "adminToken",
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {"description": "done", "content": {"application/json": {"schema": ok}}}
    }
    for code, text in ERRORS.items():
        responses[code] = {
            "description": text,
            "content": {"application/json": {"schema": ref("Error")}},
        }
    responses.update(extra or {})
    out: dict[str, Any] = {"summary": summary, "responses": responses, "security": [{security: []}]}
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        out["parameters"] = params
    return out


def path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


# the ids the proxy issues (keys, tokens, reloads, requests) and tier names: letters, digits
# and a few separators, as a request target carries them unencoded
OPAQUE_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"}
ORG = path_param("org", ID)
MEMBER_P = path_param("member", MEMBER)


def page_params(most: int, cursor: re.Pattern[str]) -> list[dict[str, Any]]:
    """A paged list's query: ``limit`` (1 to ``most``) and the ``cursor`` a page gave."""
    return [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": most},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "pattern": f"^{cursor.pattern}$"},
        },
    ]


UNAVAILABLE = {
    "503": {
        "description": "the ledger database is unavailable",
        "content": {"application/json": {"schema": ref("Error")}},
    }
}
PERIOD = {"type": "string", "pattern": r"^2\d{3}-(0[1-9]|1[0-2])$"}
# a month, optional in the query (the current one by default)
PERIOD_QUERY = {"name": "period", "in": "query", "required": False, "schema": PERIOD}

SCHEMAS: dict[str, Any] = {
    "Error": obj(
        {
            "type": {"const": "error"},
            "error": obj(
                {"type": {"type": "string"}, "message": {"type": "string"}}, ["type", "message"]
            ),
            "request_id": {"type": ["string", "null"]},
        },
        ["type", "error"],
    ),
    "Org": obj(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "plan": {"enum": list(Plan.ALL)},
            "enabled": {"type": "boolean"},
            "upstream_credential": {"type": ["string", "null"]},
        },
        ["id", "plan"],
    ),
    "Member": obj(
        {
            "org_id": {"type": "string"},
            "member_id": {"type": "string"},
            "role": {"enum": list(Role.ALL)},
            "tier": {"type": "string"},
            "enabled": {"type": "boolean"},
        },
        ["member_id", "role", "tier"],
    ),
    "ExtraUsage": obj(
        {
            "plan": {"enum": list(Plan.ALL)},
            "enabled": {"type": "boolean"},
            "member_consent": {"enum": list(Consent.ALL)},
            "monthly_limit": USD_OR_NULL,
            "balance": USD,
            "member_scope": {"enum": list(Scope.ALL)},
            "requests_enabled": {"type": "boolean"},
            "auto_reload": ANY,
            "tier_limits": ANY,
        },
        ["plan", "enabled", "monthly_limit"],
    ),
    "Request": obj(
        {
            "id": {"type": "string"},
            "member_id": {"type": "string"},
            "state": {"enum": list(RequestState.ALL)},
            "amount": USD_OR_NULL,
        },
        ["id", "member_id", "state"],
    ),
    "Decision": obj(
        {
            "decision": {"enum": list(Decision.ALL)},
            "mode": {"enum": [*Mode.ALL, None]},
            "reservation_id": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"]},
            "retry_after": {"type": ["integer", "null"]},
            "resets_at": {"type": ["string", "null"]},
            "utilization": ANY,
            "extra_usage": ANY,
        },
        ["decision"],
    ),
    "Status": obj(
        {
            "member_id": {"type": "string"},
            "plan": {"type": "string"},
            "tier": {"type": "string"},
            "mode": {"enum": [*Mode.ALL, Mode.LIMITED]},
            "windows": ANY,
            "extra_usage": ANY,
        },
        ["member_id", "mode", "windows", "extra_usage"],
    ),
}

CHECK_BODY = obj(
    {
        "org_id": ID,
        "member_id": MEMBER,
        "model": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]*$",
        },
        "input_tokens": {"type": "integer", "minimum": 0, "maximum": 100_000_000},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "request_id": {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"},
        "accept_extra_usage": {"type": "boolean"},
        "reserve": {"type": "boolean"},
        # as in the Messages API: a web search tool's max_uses, a web fetch tool's max_uses
        # and max_content_tokens count in the reservation (strict refuses a tool without)
        "tools": {
            "type": "array",
            "maxItems": 64,
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "maxLength": 64},
                    "name": {"type": "string", "maxLength": 128},
                    "max_uses": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "max_content_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
                },
                "required": ["type"],
            },
        },
    },
    ["org_id", "member_id", "model", "input_tokens", "max_tokens", "request_id"],
    additionalProperties=False,
)
USAGE = obj(
    {
        "input_tokens": COUNT,
        "output_tokens": COUNT,
        "cache_creation_input_tokens": COUNT,
        "cache_read_input_tokens": COUNT,
        "cache_creation": obj(
            {"ephemeral_5m_input_tokens": COUNT, "ephemeral_1h_input_tokens": COUNT}
        ),
        "server_tool_use": obj({"web_search_requests": COUNT}),
    }
)
EU_PATCH = obj(
    {
        "enabled": {"type": "boolean"},
        "member_scope": {"enum": list(Scope.ALL)},
        "member_consent": {"enum": list(Consent.ALL)},
        "monthly_limit": LIMIT_IN,
        "requests_enabled": {"type": "boolean"},
        "reservation_policy": {"enum": [*Policy.ALL, None]},
        "auto_reload": obj(
            {"enabled": {"type": "boolean"}, "threshold": AMOUNT_IN, "amount": POSITIVE_IN},
            minProperties=1,
            additionalProperties=False,
        ),
    },
    minProperties=1,
    additionalProperties=False,
)


def document() -> dict[str, Any]:
    base = "/admin/v1/orgs/{org}"
    eu = base + "/extra-usage"
    rid = path_param("request_id", OPAQUE_ID)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "extra-usage-proxy check and admin APIs",
            "version": "1",
            "description": "Money is a decimal string in USD. Admin routes take an "
            "operator or admin token; the check API the service token.",
        },
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "serviceToken": {"type": "http", "scheme": "bearer"},
            },
            "schemas": SCHEMAS,
        },
        "paths": {
            "/v1/usage/check": {
                "post": op(
                    "Decide (and reserve) before serving a message",
                    ref("Decision"),
                    body=CHECK_BODY,
                    security="serviceToken",
                )
            },
            "/v1/usage/settle": {
                "post": op(
                    "Charge the actual usage of a reservation",
                    ANY,
                    body=obj(
                        {"reservation_id": RSV, "usage": USAGE},
                        ["reservation_id", "usage"],
                        additionalProperties=False,
                    ),
                    security="serviceToken",
                )
            },
            "/v1/usage/release": {
                "post": op(
                    "Release a reservation without charging",
                    ANY,
                    body=ONLY_RESERVATION,
                    security="serviceToken",
                )
            },
            "/v1/usage/renew": {
                "post": op(
                    "Keep a reservation another policy.reservation_ttl_s (a long generation); "
                    "renewed false once it is settled or released",
                    ANY,
                    body=ONLY_RESERVATION,
                    security="serviceToken",
                )
            },
            "/v1/usage/orgs/{org}/members/{member}": {
                "get": op(
                    "A member's windows, mode and limits",
                    ref("Status"),
                    params=[ORG, MEMBER_P],
                    security="serviceToken",
                )
            },
            "/admin/v1/me": {"get": op("Who this admin token acts for", ANY)},
            "/admin/v1/orgs": {
                "post": op(
                    "Create an organization (operator)",
                    ref("Org"),
                    status="201",
                    body=obj(
                        {
                            "id": ID,
                            "name": TEXT,
                            "plan": {"enum": list(Plan.ALL)},
                            "upstream_credential": ENV,
                        },
                        ["id", "plan"],
                        additionalProperties=False,
                    ),
                )
            },
            base: {
                "get": op("Read an organization", ref("Org"), params=[ORG]),
                "patch": op(
                    "Change an organization (operator)",
                    ref("Org"),
                    params=[ORG],
                    body=obj(
                        {
                            "name": TEXT,
                            "plan": {"enum": list(Plan.ALL)},
                            "upstream_credential": {"oneOf": [ENV, {"type": "null"}]},
                            "enabled": {"type": "boolean"},
                        },
                        additionalProperties=False,
                    ),
                ),
            },
            base + "/members/{member}": {
                "put": op(
                    "Create or replace a member",
                    ref("Member"),
                    params=[ORG, MEMBER_P],
                    body=obj(
                        {
                            "role": {"enum": list(Role.ALL)},
                            "tier": TIER,
                            "enabled": {"type": "boolean"},
                        },
                        ["role", "tier"],
                        additionalProperties=False,
                    ),
                    extra={
                        "201": {
                            "description": "created",
                            "content": {"application/json": {"schema": ref("Member")}},
                        }
                    },
                ),
                "get": op("Read a member", ref("Member"), params=[ORG, MEMBER_P]),
                "delete": op("Disable and remove a member", ANY, params=[ORG, MEMBER_P]),
            },
            base + "/members/{member}/keys": {
                "post": op(
                    "Issue a proxy key (shown once)",
                    obj(
                        {"key_id": {"type": "string"}, "key": {"type": "string"}}, ["key_id", "key"]
                    ),
                    status="201",
                    params=[ORG, MEMBER_P],
                )
            },
            base + "/members/{member}/keys/{key_id}": {
                "delete": op(
                    "Revoke a proxy key",
                    ANY,
                    params=[ORG, MEMBER_P, path_param("key_id", OPAQUE_ID)],
                )
            },
            base + "/members/{member}/admin-tokens": {
                "post": op(
                    "Issue an admin token acting for the member (operator)",
                    obj(
                        {"token_id": {"type": "string"}, "token": {"type": "string"}},
                        ["token_id", "token"],
                    ),
                    status="201",
                    params=[ORG, MEMBER_P],
                )
            },
            base + "/members/{member}/admin-tokens/{token_id}": {
                "delete": op(
                    "Revoke an admin token",
                    ANY,
                    params=[ORG, MEMBER_P, path_param("token_id", OPAQUE_ID)],
                )
            },
            eu: {
                "get": op("Extra usage settings", ref("ExtraUsage"), params=[ORG]),
                "patch": op(
                    "Change extra usage settings", ref("ExtraUsage"), params=[ORG], body=EU_PATCH
                ),
            },
            eu + "/tiers/{tier}": {
                "put": op(
                    "Enterprise: a seat tier's monthly limit for each of its members",
                    ANY,
                    params=[ORG, path_param("tier", OPAQUE_ID)],
                    body=obj(
                        {"monthly_limit": LIMIT_IN}, ["monthly_limit"], additionalProperties=False
                    ),
                )
            },
            eu + "/members/{member}": {
                "put": op(
                    "Team: enable a member (selected scope); Enterprise: a member's limit",
                    ANY,
                    params=[ORG, MEMBER_P],
                    body=obj(
                        {"enabled": {"type": "boolean"}, "monthly_limit": LIMIT_IN},
                        minProperties=1,
                        maxProperties=1,
                        additionalProperties=False,
                    ),
                )
            },
            eu + "/credits": {
                "get": op(
                    "Team: purchases and reloads of all time, newest first, a page at a time "
                    "(the durable ledger; next_cursor: the next page's cursor, null on the last)",
                    ANY,
                    params=[ORG, *page_params(MAX_CREDITS, CREDIT_CURSOR)],
                    extra=UNAVAILABLE,
                )
            },
            eu + "/purchases": {
                "post": op(
                    "Team: buy prepaid credit",
                    ANY,
                    status="201",
                    params=[ORG],
                    body=obj(
                        {
                            "amount": POSITIVE_IN,
                            "idempotency_key": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 128,
                                "pattern": r"\S",
                            },
                        },
                        ["amount", "idempotency_key"],
                        additionalProperties=False,
                    ),
                    extra={
                        "200": {
                            "description": "replayed",
                            "content": {"application/json": {"schema": ANY}},
                        }
                    },
                )
            },
            eu + "/reloads/{reload_id}/confirm": {
                "post": op(
                    "The payment provider confirms a reload (operator)",
                    ANY,
                    params=[ORG, path_param("reload_id", OPAQUE_ID)],
                )
            },
            eu + "/requests": {
                "get": op(
                    "Extra usage requests",
                    obj({"requests": {"type": "array", "items": ref("Request")}}, ["requests"]),
                    params=[ORG],
                )
            },
            eu + "/requests/{request_id}/approve": {
                "post": op(
                    "Approve a request (raises the member's limit)",
                    ref("Request"),
                    params=[ORG, rid],
                )
            },
            eu + "/requests/{request_id}/dismiss": {
                "post": op("Dismiss a request", ref("Request"), params=[ORG, rid])
            },
            base + "/usage": {
                "get": op(
                    "Spend by member for a period",
                    ANY,
                    params=[
                        ORG,
                        PERIOD_QUERY,
                    ],
                    extra=UNAVAILABLE,
                )
            },
            base + "/usage/daily": {
                "get": op(
                    "Extra usage by day, member and model (the durable ledger)",
                    ANY,
                    params=[
                        ORG,
                        PERIOD_QUERY,
                    ],
                    extra=UNAVAILABLE,
                )
            },
            base + "/statements/{period}": {
                "get": op(
                    "A month's statement",
                    ANY,
                    params=[ORG, path_param("period", PERIOD)],
                    extra=UNAVAILABLE,
                )
            },
            base + "/audit": {
                "get": op(
                    "The audit log, newest first, a page at a time (next_cursor: the next "
                    "page's cursor, null on the last)",
                    ANY,
                    params=[
                        ORG,
                        *page_params(MAX_ENTRIES, AUDIT_CURSOR),
                    ],
                )
            },
        },
    }
