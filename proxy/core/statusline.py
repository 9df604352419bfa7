"""The one line Claude Code's status line shows a member (``GET /v1/usage/me/statusline``):
both windows, then extra usage — what binds and how much is left, or why it is not
available and what to do. Pure: from admit.lua's full answer (a status read)."""

from __future__ import annotations

from proxy.core.admission import Admission
from proxy.core.decision import binding, clock_time, date_time, utilization
from proxy.core.money import format_usd
from proxy.core.vocabulary import Plan, Reason

CONSENT_HINT = "ANTHROPIC_CUSTOM_HEADERS='x-extra-usage: accept'"


def _pct(used: int, allowance: int) -> str:
    return f"{int(utilization(used, allowance) * 100)}%"


def _window(label: str, used: int, allowance: int, reset: str) -> str:
    text = f"{label} {_pct(used, allowance)}"
    return f"{text} (reached · resets {reset})" if used >= allowance else text


def _usd(nano: int) -> str:
    return "$" + format_usd(nano)


def extra_usage(a: Admission) -> str:
    reason = a["eu_reason"] if a["eu_available"] != "1" else ""
    if a["eu_on"] != "1":
        return "extra usage off"
    if reason == Reason.MEMBER_OFF:
        return "extra usage not enabled for you"
    if reason == Reason.CONSENT:
        return f"extra usage needs your consent: {CONSENT_HINT}"
    if reason == Reason.BALANCE:
        return "extra usage: prepaid balance used up"
    bound = binding(a)
    if reason:  # a spend limit reached
        name = bound[0] if bound is not None else "spend limit"
        return f"extra usage: {name} reached · resets {date_time(a.nano('eu_reset'))}"
    if bound is None:
        text = f"extra usage {_usd(a.nano('spend'))} this month (no limit)"
    else:
        name, spent, limit = bound
        text = f"extra usage {_usd(spent)} of {_usd(limit)} ({name})"
    if a["plan"] == Plan.TEAM:
        text += f" · balance {_usd(a.nano('balance'))}"
    return text


def status_line(a: Admission) -> str:
    """``5h 77% · 7d 20% · extra usage $3.20 of $50.00 (member limit)``."""
    five = _window("5h", a.nano("s_used"), a.nano("s_allow"), clock_time(a.nano("s_reset")))
    seven = _window("7d", a.nano("w_used"), a.nano("w_allow"), date_time(a.nano("w_reset")))
    return f"{five} · {seven} · {extra_usage(a)}"
