"""How many requests of one org are in flight upstream at once: bounded, so that no org —
one member's runaway script, a flood of cheap requests — can hold the connections that every
other org needs (``upstream.max_connections_per_org``)."""

from __future__ import annotations

from proxy.core.errors import TooBusy


class OrgSlots:
    """``take(org)`` before, ``give(org)`` after (in a ``finally``): plain calls, not a
    context manager — this runs on every request."""

    def __init__(self, per_org: int) -> None:
        self.per_org = per_org
        self.used: dict[str, int] = {}

    def take(self, org: str) -> None:
        """One of the org's slots; a 429 (retryable) when none is free."""
        used = self.used.get(org, 0)
        if used >= self.per_org:
            raise TooBusy(
                f"your organization has {used} requests in flight, the most this proxy runs "
                "at once for one organization; try again in a moment",
                headers={"retry-after": "1"},
            )
        self.used[org] = used + 1

    def give(self, org: str) -> None:
        left = self.used[org] - 1
        if left:
            self.used[org] = left
        else:
            del self.used[org]
