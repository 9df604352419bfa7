"""The audit log in the admin API's words: who changed what, before and after, when, and a
summary an owner reads ("monthly limit $100.00 → Unlimited")."""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.admin.actors import Actor, require
from proxy.core.errors import InvalidRequest
from proxy.core.money import stored_usd
from proxy.storage.model import MEMBER_SEP, ON, Member, Org
from proxy.storage.store import Store

MAX_ENTRIES = 1000


CURSOR = re.compile(r"[0-9]{1,19}-[0-9]{1,19}")  # a stream entry id (each part < 2^64)


async def audit(
    store: Store, actor: Actor, org: str, count: int, cursor: str | None = None
) -> dict[str, Any]:
    """A page of ``count`` entries (1 to ``MAX_ENTRIES``), newest first, from ``cursor`` (the
    ``next_cursor`` of the page before; None: the newest); ``next_cursor`` is None on the
    last page."""
    require(actor, org)
    if cursor is not None and not CURSOR.fullmatch(cursor):
        raise InvalidRequest("cursor: not a cursor this API gave (use next_cursor as it came)")
    count = min(max(count, 1), MAX_ENTRIES)
    rows = await store.audit(org, count, cursor)
    return {
        "org_id": org,
        "entries": [_audit_entry(r) for r in rows],
        "next_cursor": rows[-1]["id"] if len(rows) == count else None,
    }


# how the admin API names and shows what the audit log's entries changed: an org field, or a
# member's ("<member>|<field>"); amounts as USD strings, flags as booleans
_ORG_WORDS: dict[str, tuple[str, str]] = {
    Org.LIMIT: ("monthly_limit", "usd"),
    Org.EU_ON: ("enabled", "flag"),
    Org.SCOPE: ("member_scope", ""),
    Org.CONSENT: ("member_consent", ""),
    Org.POLICY: ("reservation_policy", ""),
    Org.AUTO_RELOAD_ON: ("auto_reload.enabled", "flag"),
    Org.AUTO_RELOAD_THRESHOLD: ("auto_reload.threshold", "usd"),
    Org.AUTO_RELOAD_AMOUNT: ("auto_reload.amount", "usd"),
    Org.RELOAD_PENDING: ("auto_reload.pending_reload_id", ""),
    Org.REQUESTS_ON: ("requests_enabled", "flag"),
    Org.BALANCE: ("balance", "usd"),
    Org.UPSTREAM: ("upstream_credential", ""),
    Org.ENABLED: ("org_enabled", "flag"),
}
_MEMBER_WORDS: dict[str, tuple[str, str]] = {
    Member.LIMIT: ("monthly_limit", "usd"),
    Member.EU: ("extra_usage_enabled", "flag"),
    Member.ENABLED: ("enabled", "flag"),
    Member.CONSENT: ("extra_usage_consent", "flag"),
}


def _shown(value: Any, kind: str) -> Any:
    if value is None or kind == "":
        return value
    if kind == "flag":
        return value == ON
    try:
        return stored_usd(value)
    except (TypeError, ValueError):
        return value


def api_words(fields: dict[str, Any]) -> dict[str, Any]:
    """An audit entry's before/after in the admin API's words: ``{"limit": "100000000000"}``
    is ``{"monthly_limit": "100.00"}``, ``{"ann|eu": "1"}`` is
    ``{"members.ann.extra_usage_enabled": true}``, ``tlimit:premium`` is
    ``tier_limits.premium``; a field the API does not show keeps its name."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        record = _request_record(value)
        if record is not None:  # an extra usage request (its JSON record, by its id)
            out[f"requests.{name}"] = record
        elif name == Member.PRIMARY:
            out["primary_owner"] = value
        elif name.startswith(Org.TIER_LIMIT):
            out[f"tier_limits.{name[len(Org.TIER_LIMIT) :]}"] = _shown(value, "usd")
        elif MEMBER_SEP in name and not name.startswith(MEMBER_SEP):
            member, field = Member.split(name)
            word, kind = _MEMBER_WORDS.get(field, (field, ""))
            out[f"members.{member}.{word}"] = _shown(value, kind)
        else:
            word, kind = _ORG_WORDS.get(name, (name, ""))
            out[word] = _shown(value, kind)
    return out


_REQUEST_AMOUNTS = ("amount", "granted", "new_limit", "new_tier_limit", "new_org_limit")


def _request_record(value: Any) -> dict[str, Any] | None:
    """An extra usage request's stored record, with its amounts in USD; None for any other
    value."""
    if not isinstance(value, str) or not value.startswith("{"):
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or "member" not in doc or "state" not in doc:
        return None
    return {k: (_shown(v, "usd") if k in _REQUEST_AMOUNTS and v else v) for k, v in doc.items()}


def _said(value: Any, usd: bool) -> str:
    if value is None:
        return "Unlimited" if usd else "none"
    if value is True or value is False:
        return "on" if value else "off"
    return f"${value}" if usd and isinstance(value, str) else str(value)


def summary(before: dict[str, Any], after: dict[str, Any]) -> str:
    """``monthly limit $100.00 → Unlimited``: each field changed, in words."""
    parts = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name.startswith("requests."):
            r: dict[str, Any] = new or old or {}
            asked = f" for ${r['amount']}" if r.get("amount") else ""
            was = old["state"] if old else "none"
            granted = f", granted ${new['granted']}" if new and new.get("granted") else ""
            parts.append(
                f"extra usage request of {r['member']}{asked} {was} → {r['state']}{granted}"
            )
            continue
        label = name.replace("_", " ").replace(".", " · ")
        usd = name.endswith(("limit", "threshold", "amount", "balance")) or name.startswith(
            "tier_limits."
        )
        parts.append(f"{label} {_said(old, usd)} → {_said(new, usd)}")
    return "; ".join(parts)


_CREDENTIAL_WORDS = {
    "key.issue": "issued proxy key",
    "key.revoke": "revoked proxy key",
    "admin_token.issue": "issued admin token",
    "admin_token.revoke": "revoked admin token",
}


def _audit_entry(r: dict[str, str]) -> dict[str, Any]:
    before = api_words(orjson.loads(r["before"]) or {})
    after = api_words(orjson.loads(r["after"]) or {})
    said = summary(before, after)
    if r["action"] in _CREDENTIAL_WORDS:
        cred = after or before
        said = f"{_CREDENTIAL_WORDS[r['action']]} {cred.get('id')} of {cred.get('member')}"
    return {
        "id": r["id"],
        "at": int(r["ts"]),
        "actor": r["actor"],
        "action": r["action"],
        "before": before,
        "after": after,
        "summary": said,
    }
