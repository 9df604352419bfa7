"""The conservation harness's fast scenarios, with exact assertions: what the mock served is
what the ledger charged, to the nano-dollar, request by request; no limit passed. Where the
proxy is killed, what the API had in transit at that instant never reached it: there every
request cut by the kill is charged within [what the member was sent, what the API served]
(at least 99 % of them, the issue's bound), none twice, and never more than was served."""

from __future__ import annotations

import pytest

from bench.conservation import FAST, run_one


@pytest.mark.parametrize("name", FAST)
async def test_every_token_served_is_charged_once_and_no_limit_is_passed(name: str) -> None:
    row = await run_one(name)
    assert row.requests > 0 and row.served > 0
    assert (row.twice, row.over_limit) == (0, 0), row
    if not row.within:
        assert (row.difference, row.uncharged) == (0, 0), row
        return
    ok, cut = map(int, row.within.split("/"))
    assert cut > 0 and ok >= 0.99 * cut, row
    assert row.difference <= 0, row  # only what was in transit at the kill goes uncharged
