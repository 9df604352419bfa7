"""The explanation of an admission decision: response headers, refusal messages, status JSON.

Pure: from what admit.lua answered to what a client sees. The proxy and the check API both
use it, so that chat and Claude Code tell a member the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.core.admission import Admission, claim_of
from proxy.core.errors import Refused
from proxy.core.money import format_usd
from proxy.core.vocabulary import Claim, Mode, Plan, Reason, limit_name

WARNING_AT = 0.75
SECOND_WARNING_AT = 0.95

BILLING_REASONS = Reason.BILLING


def utilization(used: int, allowance: int) -> float:
    return used / allowance if allowance > 0 else 1.0


def _frac(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".") if x else "0"


def clock_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M UTC")


def date_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_SPEND_LIMITS = (
    ("spend", "member_limit"),
    ("spend", "tier_limit"),
    ("org_spend", "org_limit"),
)


def overage_utilization(a: Admission) -> float:
    """The highest fraction used of any monthly spend limit that applies."""
    raw = a.raw
    highest = 0.0
    for used, limit in _SPEND_LIMITS:
        lim = raw[limit]
        if lim:  # "" is no limit
            frac = utilization(int(raw[used] or 0), int(lim))
            if frac > highest:
                highest = frac
    return highest


def unified_headers(a: Admission) -> dict[str, str]:
    """The anthropic-ratelimit-unified-* headers that Claude Code reads to show usage."""
    raw = a.raw  # the hot path: plain dict reads
    s_util = utilization(int(raw["s_used"] or 0), int(raw["s_allow"] or 0))
    w_util = utilization(int(raw["w_used"] or 0), int(raw["w_allow"] or 0))
    eu_ok = raw["eu_available"] == "1"
    o_util = overage_utilization(a)
    eu_reset = raw["eu_reset"]
    if raw["mode"] == Mode.EXTRA_USAGE:
        claim, reset = Claim.OVERAGE, eu_reset or "0"
        status = "allowed_warning" if o_util >= WARNING_AT else "allowed"
    else:
        claim, reset = claim_of(raw)
        reset = reset or "0"
        if not a.allowed:
            status = "rejected"
        else:
            status = "allowed_warning" if max(s_util, w_util) >= WARNING_AT else "allowed"
    h = {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-reset": reset,
        "anthropic-ratelimit-unified-representative-claim": claim,
        "anthropic-ratelimit-unified-5h-utilization": _frac(s_util),
        "anthropic-ratelimit-unified-5h-reset": raw["s_reset"],
        "anthropic-ratelimit-unified-7d-utilization": _frac(w_util),
        "anthropic-ratelimit-unified-7d-reset": raw["w_reset"],
        "anthropic-ratelimit-unified-overage-status": (
            ("allowed_warning" if o_util >= WARNING_AT else "allowed") if eu_ok else "rejected"
        ),
        "anthropic-ratelimit-unified-overage-reset": eu_reset,
    }
    # per window, as the API sends them: its status, and the warning threshold it passed
    for label, util in (("5h", s_util), ("7d", w_util)):
        h[f"anthropic-ratelimit-unified-{label}-status"] = (
            "rejected" if util >= 1 else "allowed_warning" if util >= WARNING_AT else "allowed"
        )
        if util >= WARNING_AT:
            passed = "0.95" if util >= SECOND_WARNING_AT else "0.75"
            h[f"anthropic-ratelimit-unified-{label}-surpassed-threshold"] = passed
    if not eu_ok and raw["eu_reason"]:
        h["anthropic-ratelimit-unified-overage-disabled-reason"] = raw["eu_reason"]
    return h


@dataclass(frozen=True, slots=True)
class Fit:
    """For a strict refusal: what the request could cost, and the max_tokens that would fit."""

    max_cost: int
    max_tokens: int


def refusal(a: Admission, fit: Fit | None = None, page: str = "") -> Refused:
    """The 429 for a denied admission, in words a member can act on; ``page``: the absolute
    URL of the member's usage page, named at the end when given."""
    see = f" · your usage: {page}" if page else ""
    now = a.nano("now")
    reason = a["reason"]
    headers = {"x-should-retry": "false", **unified_headers(a)}
    if a["claim"] == Claim.SEVEN_DAY:
        seat = f"You've hit your weekly limit · resets {date_time(a.nano('claim_reset'))}"
    else:
        seat = f"You've hit your session limit · resets {clock_time(a.nano('claim_reset'))}"
    seat_retry = max(1, a.nano("claim_reset") - now)

    if reason in BILLING_REASONS:
        name = limit_name(reason)
        if reason == Reason.TIER_LIMIT:
            name = f"monthly {a['tier']} seat-tier spend limit"
        if reason == Reason.BALANCE:
            head = f"{name} is used up; an owner can buy credit or turn on auto-reload"
            retry_after = None
        else:
            head = f"{name} reached · resets {date_time(a.nano('eu_reset'))}"
            retry_after = max(1, a.nano("eu_reset") - now)
        if a["fits"] == "0" and fit is not None:
            left = a.nano("eu_remaining")
            head = (
                f"this request could cost up to ${format_usd(fit.max_cost)}, more than the "
                f"${format_usd(max(left, 0))} left of the {name}"
            )
            if fit.max_tokens > 0:
                head += (
                    f"; a max_tokens of at most {fit.max_tokens} would fit (Claude Code: "
                    f"CLAUDE_CODE_MAX_OUTPUT_TOKENS={fit.max_tokens})"
                )
            if retry_after is not None:
                head += f" (the limit resets {date_time(a.nano('eu_reset'))})"
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        if (
            reason in (Reason.MEMBER_LIMIT, Reason.TIER_LIMIT)
            and a["plan"] == Plan.ENTERPRISE
            and a["requests_on"] == "1"
        ):
            head += "; you can ask your admins for more: POST /v1/usage/me/extra-usage-requests"
        return Refused(
            f"{head} ({seat}; extra usage is billed at API prices){see}",
            headers=headers,
            error_type="billing_error",
        )

    headers["retry-after"] = str(seat_retry)
    if reason == Reason.CONSENT:
        msg = (
            f"{seat}. You can continue on extra usage, billed at API prices: accept once "
            "with POST /v1/usage/me/extra-usage, or per request with the header "
            "x-extra-usage: accept (Claude Code: ANTHROPIC_CUSTOM_HEADERS='x-extra-usage: "
            "accept')"
        )
    elif reason == Reason.ORG_OFF:
        msg = f"{seat}. Extra usage is off for your organization; an owner can turn it on"
    elif reason == Reason.MEMBER_OFF:
        if a["plan"] == Plan.ENTERPRISE and a["requests_on"] == "1":
            msg = (
                f"{seat}. Extra usage is not enabled for you; ask your admins for more with "
                "POST /v1/usage/me/extra-usage-requests"
            )
        else:
            msg = f"{seat}. Extra usage is not enabled for you; an owner can enable it"
    else:
        msg = seat
    return Refused(msg + see, headers=headers, error_type="rate_limit_error")


def window(used: int, allowance: int, resets_at: int) -> dict[str, object]:
    return {
        "used": format_usd(used),
        "allowance": format_usd(allowance),
        "utilization": round(utilization(used, allowance), 4),
        "resets_at": iso(resets_at),
    }


def _binding_view(a: Admission) -> dict[str, str] | None:
    bound = binding(a)
    if bound is None:
        return None
    name, spent, limit = bound
    return {"name": name, "spent": format_usd(spent), "limit": format_usd(limit)}


def _usd(v: int | None) -> str | None:
    return None if v is None else format_usd(v)


def binding(a: Admission) -> tuple[str, int, int] | None:
    """(name, spent, limit) of the spend limit with the least room left; None: unlimited."""
    found: list[tuple[int, str, int, int]] = []
    spend, org_spend = a.nano("spend"), a.nano("org_spend")
    for name, spent, limit in (
        ("member limit", spend, a.opt_nano("member_limit")),
        (f"{a['tier']} tier limit", spend, a.opt_nano("tier_limit")),
        ("organization limit", org_spend, a.opt_nano("org_limit")),
    ):
        if limit is not None:
            found.append((limit - spent, name, spent, limit))
    if not found:
        return None
    _, name, spent, limit = min(found)
    return name, spent, limit


def status_document(a: Admission) -> dict[str, object]:
    """The member's status, as /v1/usage/me and the check API's member route show it."""
    seat_ok = a.nano("s_used") < a.nano("s_allow") and a.nano("w_used") < a.nano("w_allow")
    if seat_ok:
        mode = Mode.INCLUDED
    elif a["eu_available"] == "1":
        mode = Mode.EXTRA_USAGE
    else:
        mode = Mode.LIMITED
    doc: dict[str, object] = {
        "member_id": a["member"],
        "plan": a["plan"],
        "tier": a["tier"],
        "mode": mode,
        "windows": {
            Claim.FIVE_HOUR: window(a.nano("s_used"), a.nano("s_allow"), a.nano("s_reset")),
            Claim.SEVEN_DAY: window(a.nano("w_used"), a.nano("w_allow"), a.nano("w_reset")),
        },
        "extra_usage": {
            "org_enabled": a["eu_on"] == "1",
            "available": a["eu_available"] == "1",
            "disabled_reason": a["eu_reason"] or None,
            "consent": a["consent"],
            "accepted": a["consented"] == "1",
            "remaining": _usd(a.opt_nano("eu_remaining")),
            "period": a["period"],
            "resets_at": iso(a.nano("eu_reset")),
            "month_to_date_spend": format_usd(a.nano("spend")),
            "organization_spend": format_usd(a.nano("org_spend")),
            "limits": {
                "member": _usd(a.opt_nano("member_limit")),
                "seat_tier": _usd(a.opt_nano("tier_limit")),
                "organization": _usd(a.opt_nano("org_limit")),
            },
            "binding": _binding_view(a),
        },
    }
    if a["plan"] == Plan.TEAM:
        bal = a.nano("balance")
        doc["extra_usage"]["balance"] = format_usd(bal)  # type: ignore[index]
        doc["extra_usage"]["credit_remaining"] = bal > 0  # type: ignore[index]
    return doc
