from __future__ import annotations

import calendar
from datetime import UTC, datetime

from proxy.core.statements import (
    current_period,
    differences,
    fold,
    is_closed,
    merge,
    month_end,
    statement_csv,
    statement_document,
)


def test_months_close_after_their_end_and_a_grace() -> None:
    assert month_end("2026-12") == calendar.timegm((2027, 1, 1, 0, 0, 0))
    end = month_end("2026-11")
    assert not is_closed("2026-11", end + 86399, 86400)
    assert is_closed("2026-11", end + 86400, 86400)
    assert current_period(end) == "2026-12"


def line(member: str, mode: str, cost: int) -> dict[str, object]:
    return {
        "member_id": member,
        "tier": "standard",
        "model": "claude-sonnet-4-5",
        "mode": mode,
        "requests": 2,
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "cache_read_tokens": 5,
        "web_search_requests": 0,
        "cost_nano": cost,
    }


def test_team_statement_balances_and_csv() -> None:
    credits = [
        {
            "kind": "purchase",
            "op_id": "purchase:a",
            "ts": datetime(2026, 11, 2, tzinfo=UTC),
            "balance_delta_nano": 5_000_000_000,
        }
    ]
    doc = statement_document(
        "acme",
        "team",
        "2026-11",
        [line("ann", "included", 1_000_000_000), line("ann", "extra_usage", 1_500_000_000)],
        credits,
        2_000_000_000,
        closed=False,
    )
    assert doc["totals"] == {
        "requests": 4,
        "included_usage": "1.00",
        "extra_usage": "1.50",
        "estimated": "0.00",
    }
    assert (doc["opening_balance"], doc["closing_balance"]) == ("2.00", "5.50")
    assert doc["credits"][0]["at"] == "2026-11-02T00:00:00Z"
    text = statement_csv(doc)
    rows = [r.split(",") for r in text.splitlines()]
    assert text.splitlines()[1].startswith("2026-11,ann,standard,claude-sonnet-4-5,included,2")
    assert text.splitlines()[-1].endswith(",1.50,,0.00")
    # the credits and the balance beside the usage, each in the cost column, every row as wide
    assert {len(r) for r in rows} == {len(rows[0])}
    cost = rows[0].index("cost_usd")
    assert [(r[1], r[cost]) for r in rows[3:6]] == [
        ("CREDIT purchase 2026-11-02T00:00:00Z purchase:a", "5.00"),
        ("OPENING BALANCE", "2.00"),
        ("CLOSING BALANCE", "5.50"),
    ]


def test_estimated_charges_are_shown_apart_on_the_statement_and_its_csv() -> None:
    cut = {**line("ann", "extra_usage", 3_000_000_000), "estimated_requests": 1}
    cut["estimated_nano"] = 1_250_000_000
    doc = statement_document("g", "enterprise", "2026-11", [cut], [], 0, closed=False)
    assert doc["lines"][0]["estimated_cost"] == "1.25"
    assert doc["lines"][0]["estimated_requests"] == 1
    assert doc["totals"]["estimated"] == "1.25"
    rows = statement_csv(doc).splitlines()
    assert rows[0].endswith(",cost_usd,estimated_requests,estimated_cost_usd")
    assert rows[1].endswith(",3.00,1,1.25")
    assert rows[-1].endswith(",3.00,,1.25")


def test_enterprise_statement_is_the_invoice_basis() -> None:
    doc = statement_document(
        "g", "enterprise", "2026-10", [line("d", "extra_usage", 42)], [], 0, closed=True
    )
    assert doc["invoice"] == {"amount_due": "0.000000042", "basis": "extra usage at API prices"}
    assert doc["status"] == "closed"


def test_fold_and_differences() -> None:
    entries = [
        {
            "kind": "purchase",
            "period": "2026-11",
            "balance_delta": "100",
            "cost": "0",
            "mode": "",
            "member": "",
            "tier": "",
        },
        {
            "kind": "usage",
            "period": "2026-11",
            "balance_delta": "-30",
            "cost": "30",
            "mode": "extra_usage",
            "member": "a",
            "tier": "standard",
        },
        {
            "kind": "usage",
            "period": "2026-11",
            "balance_delta": "0",
            "cost": "7",
            "mode": "included",
            "member": "a",
            "tier": "standard",
        },
        {
            "kind": "usage",
            "period": "2026-10",
            "balance_delta": "-5",
            "cost": "5",
            "mode": "extra_usage",
            "member": "a",
            "tier": "standard",
        },
    ]
    totals = fold(entries, "2026-11")
    assert totals == {
        "org:balance": 65,
        "member:a:spend": 30,
        "tier:standard:spend": 30,
        "org:spend": 30,
        "member:a:included": 7,
    }
    assert merge(totals, {"org:spend": 1})["org:spend"] == 31
    assert differences(totals, totals) == []
    assert differences({"org:spend": 31}, {"org:spend": 30, "x": 1}) == [
        {"counter": "org:spend", "redis": 31, "ledger": 30, "difference": 1},
        {"counter": "x", "redis": 0, "ledger": 1, "difference": -1},
    ]
