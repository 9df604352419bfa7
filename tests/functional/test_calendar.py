"""The scripts' calendar (lua/lib.lua month_of) against Python's, on a real redis-server: the
month an epoch second falls in and the second that month ends, at and around every month
boundary from 1970 to 2100 (monthly spend and its reset depend on both)."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

import redis.asyncio as aioredis

LIB = resources.files("proxy.lua").joinpath("lib.lua").read_text("utf-8")  # the shared prelude
PROBE = (
    LIB
    + """
local out = {}
for i = 1, #ARGV do
  local period, ends = month_of(tonumber(ARGV[i]))
  out[#out + 1] = period .. ' ' .. string.format('%d', ends)
end
return out
"""
)


def expected(t: int) -> str:
    d = datetime.fromtimestamp(t, UTC)
    nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=UTC)
    return f"{d.year:04d}-{d.month:02d} {int(nxt.timestamp())}"


async def test_month_of_matches_the_calendar_at_every_month_boundary(
    redis_client: aioredis.Redis,
) -> None:
    times: list[int] = []
    for year in range(1970, 2101):
        for month in range(1, 13):
            start = int(datetime(year, month, 1, tzinfo=UTC).timestamp())
            times += [start - 1, start, start + 1, start + 86_399, start + 15 * 86_400 + 43_210]
    got: list[bytes] = []
    for i in range(0, len(times), 1000):
        got += await redis_client.eval(PROBE, 0, *times[i : i + 1000])
    assert [g.decode() for g in got] == [expected(t) for t in times]
