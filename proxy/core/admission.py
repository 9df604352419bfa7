"""What an admission answered (admit.lua's reply), read strictly. Pure.

The reply's fields are declared here, because the explanations of a decision
(``proxy.core.decision``) read them; ``proxy.storage.scripts`` names them as admit's reply.
Amounts are decimal strings of nano-USD; ``""`` is a value (no limit, no balance), a field
that is absent is an error: reading one raises ``MissingReplyField``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from proxy.core.vocabulary import Claim, Decision, Mode, Reason

# the decision's words, from the vocabulary (re-exported by the data model too)
ALLOW: Final = Decision.ALLOW
DENY: Final = Decision.DENY
INCLUDED: Final = Mode.INCLUDED
EXTRA_USAGE: Final = Mode.EXTRA_USAGE
MODES: Final = Mode.ALL
CLAIMS: Final = Claim.ALL
DISABLED_REASONS: Final = Reason.ALL


# what every answer carries, in the order admit.lua answers it ("|"-joined): the proxy's lean
# answer to an allowed request is these alone
LEAN_FIELDS = (
    "ok",  # "1" (a replay is answered "2", read as "1" with "replay")
    "d",  # "allow" | "deny"
    "mode",  # "included" | "extra_usage" | "" (denied)
    "reason",  # a refusal reason ("" when allowed)
    "amount",  # reserved, nano-USD
    "tier",
    "member",
    "upstream",  # the org's upstream credential reference ("" = the default)
    "policy",  # the reservation policy in force
    "s_used",  # the 5-hour window: used, allowance, reset (epoch s)
    "s_allow",
    "s_reset",
    "w_used",  # the 7-day window
    "w_allow",
    "w_reset",
    "eu_available",  # "1" when extra usage would be available now
    "eu_reason",  # why not (a disabled reason), else ""
    "eu_reset",  # the end of the month (epoch s)
    "spend",  # the member's month-to-date extra usage
    "org_spend",
    "member_limit",  # "" = none applies
    "tier_limit",
    "org_limit",
)
# the rest of the decision: answered to the check API, to status reads and with every denial
FULL_FIELDS = (
    *LEAN_FIELDS,
    "rid",
    "plan",
    "key",  # the proxy key's id ("" for the check API)
    "role",
    "now",  # the script's time (epoch s)
    "period",  # "YYYY-MM"
    "eu_on",
    "eu_remaining",  # the least room under any limit ("" = unlimited)
    "fits",  # "0" when strict refused a maximum that does not fit
    "consent",  # the org's consent policy
    "consented",
    "balance",  # Team: the prepaid balance; Enterprise: ""
    "reserved",  # the member's reserved extra usage
    "requests_on",
    "reload_pending",
)
ANSWERED: Final = "1"  # the status of an answer
REPLAYED: Final = "2"  # the status of a replayed request id's answer, as it was answered
_LEAN, _FULL = len(LEAN_FIELDS), len(FULL_FIELDS)
OPTIONAL_FIELDS = ("replay",)  # "1" on a replayed request id
# derived from the windows answered (Admission): the window that binds, "five_hour" |
# "seven_day", and when it resets
DERIVED_FIELDS = ("claim", "claim_reset")


def claim_of(raw: dict[str, str]) -> tuple[str, str]:
    """The seat window that binds, and its reset: a used-up one, else the one nearer its
    allowance (the 5-hour one when they are level)."""
    s_used, s_allow = int(raw["s_used"] or 0), int(raw["s_allow"] or 0)
    w_used, w_allow = int(raw["w_used"] or 0), int(raw["w_allow"] or 0)
    if w_used >= w_allow or (s_used < s_allow and w_used * s_allow > s_used * w_allow):
        return Claim.SEVEN_DAY, raw["w_reset"]
    return Claim.FIVE_HOUR, raw["s_reset"]


class MissingReplyField(KeyError):
    """A script's reply lacks a field the caller reads: a contract broken, never a default."""


class MalformedAnswer(ValueError):
    """admit's answer has neither the lean nor the full number of values: a stored value
    holds a "|" (none the admin API lets in does) — refused, never read shifted."""


def parse_answer(text: str) -> dict[str, str]:
    """admit's answer (its values joined by "|") as fields by name: ``LEAN_FIELDS`` or
    ``FULL_FIELDS`` by its length; a replay's (status "2") reads as the answer it repeats,
    with ``replay`` = "1"."""
    values = text.split("|")
    n = len(values)
    # (the length is checked: zip without strict=, which costs more on the request path)
    if n == _LEAN:
        raw = dict(zip(LEAN_FIELDS, values))  # noqa: B905
    elif n == _FULL:
        raw = dict(zip(FULL_FIELDS, values))  # noqa: B905
    else:
        raise MalformedAnswer(f"admit answered {n} values, not {_LEAN} or {_FULL}")
    if values[0] != ANSWERED:
        if values[0] != REPLAYED:
            raise MalformedAnswer(f"admit answered the status {values[0]!r}")
        raw["ok"] = ANSWERED
        raw["replay"] = "1"
    return raw


@dataclass(frozen=True, slots=True)
class Admission:
    """What admit.lua answered, with amounts as ints of nano-USD."""

    raw: dict[str, str]

    def __getitem__(self, name: str) -> str:
        try:
            return self.raw[name]
        except KeyError:
            if name in DERIVED_FIELDS:
                return claim_of(self.raw)[DERIVED_FIELDS.index(name)]
            raise MissingReplyField(f"admit's reply has no field {name!r}") from None

    def nano(self, name: str) -> int:
        v = self[name]
        return int(v) if v else 0

    def opt_nano(self, name: str) -> int | None:
        v = self[name]
        return int(v) if v else None

    @property
    def allowed(self) -> bool:
        return self["d"] == ALLOW
