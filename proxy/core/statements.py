"""Statements and reconciliation, as pure functions of ledger rows. No I/O."""

from __future__ import annotations

import calendar
import csv
import io
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.core.money import format_usd
from proxy.core.vocabulary import Mode, Plan

PERIOD = re.compile(r"^(2\d{3})-(0[1-9]|1[0-2])\Z")  # years 2000-2999
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "web_search_requests",
)


def month_end(period: str) -> int:
    """The epoch second the month ``YYYY-MM`` ends (00:00 UTC on the next 1st)."""
    y, m = int(period[:4]), int(period[5:7])
    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return calendar.timegm((y, m, 1, 0, 0, 0))


def current_period(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def calendar_month(now: float) -> tuple[str, int, int]:
    """The month of epoch second ``now``: ("YYYY-MM", its first second, the next one's)."""
    period = current_period(now)
    return (
        period,
        calendar.timegm((int(period[:4]), int(period[5:7]), 1, 0, 0, 0)),
        month_end(period),
    )


def is_closed(period: str, now: float, close_after_s: int) -> bool:
    """A month closes ``close_after_s`` after it ends: time for late settlements to land."""
    return now >= month_end(period) + close_after_s


def statement_document(
    org: str,
    plan: str,
    period: str,
    lines: Iterable[Mapping[str, Any]],
    credits: Iterable[Mapping[str, Any]],
    opening_balance: int,
    *,
    closed: bool,
) -> dict[str, Any]:
    out_lines = []
    included = extra = requests = estimated = 0
    for r in lines:
        cost = int(r["cost_nano"])
        est = int(r.get("estimated_nano") or 0)
        estimated += est
        requests += int(r["requests"])
        if r["mode"] == Mode.EXTRA_USAGE:
            extra += cost
        else:
            included += cost
        out_lines.append(
            {
                "member_id": r["member_id"],
                "tier": r["tier"],
                "model": r["model"],
                "mode": r["mode"],
                "requests": int(r["requests"]),
                **{c: int(r[c]) for c in TOKEN_COLUMNS},
                "cost": format_usd(cost),
                # of which charged on the estimate rule (answers cut before their usage came)
                "estimated_requests": int(r.get("estimated_requests") or 0),
                "estimated_cost": format_usd(est),
            }
        )
    doc: dict[str, Any] = {
        "org_id": org,
        "plan": plan,
        "period": period,
        "currency": "USD",
        "status": "closed" if closed else "open",
        "lines": out_lines,
        "totals": {
            "requests": requests,
            "included_usage": format_usd(included),
            "extra_usage": format_usd(extra),
            "estimated": format_usd(estimated),
        },
    }
    if plan == Plan.TEAM:
        moves = [
            {
                "kind": c["kind"],
                "id": c["op_id"],
                "at": c["ts"].strftime("%Y-%m-%dT%H:%M:%SZ")
                if isinstance(c["ts"], datetime)
                else str(c["ts"]),
                "amount": format_usd(int(c["balance_delta_nano"])),
            }
            for c in credits
        ]
        added = sum(int(c["balance_delta_nano"]) for c in credits)
        doc["credits"] = moves
        doc["opening_balance"] = format_usd(opening_balance)
        doc["closing_balance"] = format_usd(opening_balance + added - extra)
    else:
        doc["invoice"] = {"amount_due": format_usd(extra), "basis": "extra usage at API prices"}
    return doc


_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A cell a spreadsheet reads as text: no formula (a cell starting with = + - @ or a tab
    gets a leading '), no line break inside (a bare CR would start a row in some readers)."""
    if not isinstance(value, str) or _NUMBER.fullmatch(value):
        return value
    text = value.replace("\r", " ").replace("\n", " ")
    return "'" + text if text.startswith(_FORMULA) else text


class _Cells:
    """A csv writer whose every cell goes through ``csv_cell``."""

    def __init__(self, buf: io.StringIO) -> None:
        self.w = csv.writer(buf, lineterminator="\n")

    def writerow(self, row: Iterable[object]) -> None:
        self.w.writerow([csv_cell(v) for v in row])


def statement_csv(doc: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = _Cells(buf)
    w.writerow(
        [
            "period",
            "member_id",
            "tier",
            "model",
            "mode",
            "requests",
            *TOKEN_COLUMNS,
            "cost_usd",
            "estimated_requests",
            "estimated_cost_usd",
        ]
    )
    for line in doc["lines"]:
        w.writerow(
            [
                doc["period"],
                line["member_id"],
                line["tier"],
                line["model"],
                line["mode"],
                line["requests"],
                *(line[c] for c in TOKEN_COLUMNS),
                line["cost"],
                line.get("estimated_requests", 0),
                line.get("estimated_cost", "0.00"),
            ]
        )
    blank = [""] * (len(TOKEN_COLUMNS) + 1)  # from requests to the token columns
    for c in doc.get("credits", []):  # Team: what was added to the balance, then the balance
        w.writerow(
            [
                doc["period"],
                f"CREDIT {c['kind']} {c['at']} {c['id']}",
                "",
                "",
                "",
                *blank,
                c["amount"],
                "",
                "",
            ]
        )
    if "closing_balance" in doc:
        for name in ("opening_balance", "closing_balance"):
            w.writerow(
                [
                    doc["period"],
                    name.replace("_", " ").upper(),
                    "",
                    "",
                    "",
                    *blank,
                    doc[name],
                    "",
                    "",
                ]
            )
    t = doc["totals"]
    w.writerow(
        [
            doc["period"],
            "TOTAL included",
            "",
            "",
            Mode.INCLUDED,
            t["requests"],
            *([""] * len(TOKEN_COLUMNS)),
            t["included_usage"],
            "",
            "",
        ]
    )
    w.writerow(
        [
            doc["period"],
            "TOTAL extra usage",
            "",
            "",
            Mode.EXTRA_USAGE,
            "",
            *([""] * len(TOKEN_COLUMNS)),
            t["extra_usage"],
            "",
            t.get("estimated", "0.00"),
        ]
    )
    return buf.getvalue()


def fold(entries: Iterable[Mapping[str, str]], period: str) -> dict[str, int]:
    """Ledger totals, the way Redis counters derive from them: extra-usage spend by member,
    tier and org in ``period``, included usage by member in ``period``, balance all-time."""
    out: dict[str, int] = {}

    def add(name: str, v: int) -> None:
        out[name] = out.get(name, 0) + v

    for e in entries:
        add("org:balance", int(e["balance_delta"]))
        if e["kind"] != "usage" or e["period"] != period:
            continue
        cost = int(e["cost"])
        if e["mode"] == Mode.EXTRA_USAGE:
            add(f"member:{e['member']}:spend", cost)
            add(f"tier:{e['tier']}:spend", cost)
            add("org:spend", cost)
        else:
            add(f"member:{e['member']}:included", cost)
    return out


def merge(*totals: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in totals:
        for k, v in t.items():
            out[k] = out.get(k, 0) + v
    return out


def differences(redis: Mapping[str, int], ledger: Mapping[str, int]) -> list[dict[str, Any]]:
    """Every counter where Redis and the ledger disagree (absent counts as 0)."""
    out = []
    for name in sorted(set(redis) | set(ledger)):
        a, b = redis.get(name, 0), ledger.get(name, 0)
        if a != b:
            out.append({"counter": name, "redis": a, "ledger": b, "difference": a - b})
    return out


def report(org: str, period: str, diffs: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {"org_id": org, "period": period, "agree": not diffs, "differences": diffs},
        option=orjson.OPT_INDENT_2,
    )
