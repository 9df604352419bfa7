"""The conservation harness's fast scenarios, with exact assertions: what the mock served is
what the ledger charged, to the nano-dollar, request by request; no limit passed; a killed
proxy's requests in flight charged within [what the member was sent, what the API served]."""

from __future__ import annotations

import pytest

from bench.conservation import FAST, run_one


@pytest.mark.parametrize("name", FAST)
async def test_every_token_served_is_charged_once_and_no_limit_is_passed(name: str) -> None:
    row = await run_one(name)
    assert row.requests > 0 and row.served > 0
    assert (row.difference, row.uncharged, row.twice, row.over_limit) == (0, 0, 0, 0), row
    if row.within:
        ok, cut = map(int, row.within.split("/"))
        assert cut > 0 and ok == cut, row
