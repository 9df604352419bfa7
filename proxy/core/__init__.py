"""Pure rules: money, prices, usage, SSE framing, decisions, statements, validation.

No aiohttp, no redis, no clock: every function takes what it needs (the time included) and
is tested with plain unit tests. Imports nothing else of the package."""
