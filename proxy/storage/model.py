"""The data model in Redis, declared once: every hash field, flag encoding, record state and
code that the scripts (``lua/``) and the Python side share, with its default.

Python builds field names from here; the Lua scripts spell the same names as literals (a
script is read best with its fields in it), and ``tests/unit/test_data_model.py`` parses every
``lua/*.lua`` and fails on a field, state or code that is not declared below. The defaults a
script needs are handed to it in a prelude generated from this module (``lua_prelude``), so
that they too are written only here.

Layout per organization (every key carries ``{org}`` as its hash tag: ``proxy.storage.keys``):

- ``org``      hash   the org's settings and counters (``Org``); per tier ``tlimit:<tier>`` …
- ``members``  hash   ``<member>|<field>`` (``Member``), and ``|primary``
- ``creds``    hash   ``k:<sha256>`` / ``t:<sha256>`` -> ``<member>|<id>|<gen>``; ``kid:<id>`` /
                      ``tid:<id>`` -> the hash (``Cred``)
- ``op:<id>``  string one operation (``Op``): a request's reservation, then its result; a
                      purchase; a reload. Expires whole after its replay window.
- ``due``      zset   (key ``reserved``) the live extra-usage reservations,
                      ``<amount>|<member>|<id>`` by expiry
- ``ledger``   stream one entry per charge, purchase, reload (``Ledger``)
- ``audit``    stream who changed what (``Audit``)
- ``requests`` hash   Enterprise extra-usage requests by id (JSON, written by Python only)

Money is integer nano-USD, written as a plain decimal integer; a monthly counter is a pair of
fields (its period ``YYYY-MM`` and its value) that counts only in its period (``in_period``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from proxy.core.admission import MalformedAnswer, parse_answer
from proxy.core.vocabulary import (
    Consent,
    Plan,
    Refusal,
    Role,
    Scope,
    words,
)

# -- encodings ---------------------------------------------------------------------------
ON: Final = "1"
OFF: Final = "0"
DELETE: Final = "\0"  # the value that deletes a field in write.lua
MEMBER_SEP: Final = "|"  # "<member>|<field>" in the members hash


def flag(value: bool) -> str:
    return ON if value else OFF


# A field of the org's three hashes read on every request (org, members, creds), written
# when the org is created: its value is longer than Redis's hash-max-listpack-value (64 by
# default), so Redis keeps each hash in its hashtable encoding from the start, where a field
# is found by its hash rather than by scanning a listpack. An admission and a settlement
# look up about 40 fields: on listpacks of a small org that scan was a fifth of their cost
# (bench/redis_ceiling.py, docs/performance.md, "Redis cost"). Not a member, a setting or a
# credential.
ENCODING_FIELD: Final = "|encoding"
ENCODING_VALUE: Final = (
    "hashtable: this value is longer than hash-max-listpack-value, so that Redis looks up "
    "this hash's fields by hash instead of scanning it"
)

# -- the words of the vocabulary the model spells (proxy.core.vocabulary declares them) -----
TEAM: Final = Plan.TEAM
ENTERPRISE: Final = Plan.ENTERPRISE
SCOPE_SELECTED: Final = Scope.SELECTED

# -- defaults, stated once (a field that is absent reads as its default) ------------------
DEFAULT_CONSENT: Final[Mapping[str, str]] = {
    Plan.TEAM: Consent.AUTOMATIC,
    Plan.ENTERPRISE: Consent.REQUIRED,
}
DEFAULT_SCOPE: Final = Scope.ALL_MEMBERS
DEFAULT_ROLE: Final = Role.MEMBER
DEFAULT_ENABLED: Final = ON  # an org or member without "enabled" is enabled
DEFAULT_REQUESTS_ON: Final = ON  # Enterprise extra-usage requests are on unless turned off


class Org:
    """Fields of the org hash."""

    PLAN: Final = "plan"
    NAME: Final = "name"
    ENABLED: Final = "enabled"
    UPSTREAM: Final = "upstream"  # the name of the variable holding its upstream key
    EU_ON: Final = "eu_on"  # extra usage enabled
    SCOPE: Final = "scope"  # Team: all | selected members
    CONSENT: Final = "consent"  # automatic | required
    LIMIT: Final = "limit"  # the monthly org spend limit (absent: unlimited)
    POLICY: Final = "policy"  # the reservation policy (absent: the config's)
    REQUESTS_ON: Final = "requests_on"  # Enterprise
    BALANCE: Final = "balance"  # Team: prepaid credit
    EU_RESERVED: Final = "eu_res"  # extra usage reserved by requests in flight
    SPEND_PERIOD: Final = "spend_p"  # the monthly org spend: its period ...
    SPEND: Final = "spend"  # ... and its value
    AUTO_RELOAD_ON: Final = "ar_on"
    AUTO_RELOAD_THRESHOLD: Final = "ar_threshold"
    AUTO_RELOAD_AMOUNT: Final = "ar_amount"
    RELOAD_PENDING: Final = "ar_pending"  # the id of the reload asked for and not confirmed
    CLOCK: Final = "clock"  # the high-water mark of the scripts' time (never runs back)
    # no reservation in ``due`` expires before this epoch second (a lower bound; absent:
    # none is held): an admission looks for expired ones only once it has passed
    RECLAIM_AT: Final = "rc"
    # per seat tier: "<prefix><tier>"
    TIER_LIMIT: Final = "tlimit:"
    TIER_SPEND_PERIOD: Final = "tspend_p:"
    TIER_SPEND: Final = "tspend:"

    @staticmethod
    def tier_limit(tier: str) -> str:
        return Org.TIER_LIMIT + tier

    @staticmethod
    def tier_spend(tier: str) -> tuple[str, str]:
        """(period field, value field) of a tier's monthly spend."""
        return Org.TIER_SPEND_PERIOD + tier, Org.TIER_SPEND + tier


class Member:
    """Fields of one member in the members hash: ``<member>|<name>``."""

    TIER: Final = "tier"  # present for every member: "the member exists"
    ROLE: Final = "role"
    ENABLED: Final = "enabled"
    DELETED: Final = "deleted"
    # moves on when the member is removed: a credential carries the generation it was issued
    # in, so removing a member revokes every credential of theirs at once, for good
    GENERATION: Final = "gen"
    SESSION_END: Final = "s_end"  # the 5-hour window: when it closes, what it used
    SESSION_USED: Final = "s_used"
    WEEK_END: Final = "w_end"  # the 7-day window
    WEEK_USED: Final = "w_used"
    SPEND_PERIOD: Final = "spend_p"  # monthly extra-usage spend
    SPEND: Final = "spend"
    INCLUDED_PERIOD: Final = "inc_p"  # monthly included usage
    INCLUDED: Final = "inc"
    # monthly cost charged on the estimate rule (answers cut before their usage came), of
    # either mode: part of the spend and included usage above, shown apart
    ESTIMATED_PERIOD: Final = "est_p"
    ESTIMATED: Final = "est"
    EU_RESERVED: Final = "eu_res"
    LIMIT: Final = "limit"  # Enterprise: the member's monthly limit (absent: unlimited)
    EU: Final = "eu"  # Team, selected scope: extra usage enabled for the member
    CONSENT: Final = "consent"  # the member accepted continuing on extra usage
    PRIMARY: Final = "|primary"  # not a member's field: names the one primary owner

    # what the admin API shows of a member
    VIEW: Final = ("tier", "role", "enabled")

    @staticmethod
    def field(member: str, name: str) -> str:
        return f"{member}{MEMBER_SEP}{name}"

    @staticmethod
    def split(field: str) -> tuple[str, str]:
        """(member, name) of a members-hash field; ("", field) for one of the hash's own."""
        member, _, name = field.rpartition(MEMBER_SEP)
        return member, name


class Guard:
    """write.lua's guards: what must hold of the target hash for a write to happen."""

    @staticmethod
    def exists(field: str) -> str:
        return f"+{field}"  # else "not_found"

    @staticmethod
    def absent(field: str) -> str:
        return f"-{field}"  # else "exists"

    @staticmethod
    def equals(field: str, value: str) -> str:
        return f"={field}={value}"  # else "conflict"


class Cred:
    """Fields of the credentials hash: by secret hash, and by credential id."""

    PROXY_KEY: Final = "k"
    ADMIN_TOKEN: Final = "t"
    KINDS: Final = (PROXY_KEY, ADMIN_TOKEN)
    BY_HASH: Final = ":"  # "<kind>:<sha256>" -> "<member>|<id>"
    BY_ID: Final = "id:"  # "<kind>id:<id>" -> "<sha256>"
    ADD: Final = "add"
    REVOKE: Final = "revoke"


class Op:
    """Operation records: one string key per operation (``op:<id>``), fields joined by "|".

    A request's record: while it is reserved, the admission's answer itself (admission.py's
    ``FULL_FIELDS`` order, "|"-joined: ``1|allow|<mode>|<reason>|<amount held>|<tier>|
    <member>|...``, which a replay of the admission answers again); once settled
    ``S|<result fields, SETTLED_FIELDS>``; once released ``R``. A reservation of extra usage
    with an amount is also in the org's ``due`` zset while it holds it: settling or
    releasing it takes it out, and an admission that finds it past its expiry reclaims it
    (a record whose ``due`` entry is gone holds nothing)."""

    RESERVED: Final = "r"
    SETTLED: Final = "S"
    RELEASED: Final = "R"
    STATES: Final = (RESERVED, SETTLED, RELEASED)
    FIELDS: Final = ("s", "a", "mode", "t", "m")  # a reserved record's, as decode() reads it
    # a settled record after "S|", in order: what a replay of the settlement answers
    SETTLED_FIELDS: Final = (
        "mode",
        "cost",
        "overshoot",
        "reserved",
        "balance",
        "period",
        "tier",
        "reload_id",
        "reload_amount",
        "entry",
        "expired",
        "estimated",
        "member",
    )
    RELOAD: Final = "reload:"  # "op:reload:<id>": an auto-reload (amount, state, created, result)
    RELOAD_ID: Final = "rl-"  # a reload's id: "rl-<the request that crossed the threshold>"
    PURCHASE: Final = "purchase:"  # "op:purchase:<idempotency key>": amount, result
    RELOAD_FIELDS: Final = ("amount", "state", "created", "result")
    RELOAD_PENDING: Final = "pending"
    RELOAD_CONFIRMED: Final = "confirmed"
    CHECK_PREFIX: Final = "chk:"  # the check API's request ids, apart from the proxy's

    @staticmethod
    def settled(raw: str) -> dict[str, str]:
        """A settled record ("S|" then ``SETTLED_FIELDS`` joined by "|", the member last) as
        its fields: what settle.lua answers and a replay of it answers again. A record of
        another state or length is a ``MalformedAnswer``."""
        values = raw.split("|", _SETTLED_PARTS - 1)
        if len(values) != _SETTLED_PARTS or values[0] != Op.SETTLED:
            raise MalformedAnswer(f"{len(values)} values, not a settled record")
        return dict(zip(Op.SETTLED_FIELDS, values[1:]))  # noqa: B905 (the length is checked)

    @staticmethod
    def decode(raw: str) -> dict[str, str]:
        """A request's record as its fields: ``s`` (its state) and, reserved, ``a``, ``mode``,
        ``t``, ``m`` and ``answer``; settled, ``SETTLED_FIELDS``. (lib.lua's ``reserved`` and
        ``settled`` read the same layout in the scripts.)"""
        if raw == Op.RELEASED:
            return {"s": Op.RELEASED}
        if raw.startswith(Op.SETTLED + "|"):
            return {"s": Op.SETTLED, **Op.settled(raw)}
        if raw.startswith("{"):  # written by the version before: its answer, then the fields
            before, _, header = raw.partition("\n")
            values = header.split("|", len(Op.FIELDS) - 1)
            return {**dict(zip(Op.FIELDS, values, strict=True)), "answer": before}
        answer = parse_answer(raw)
        return {
            "s": Op.RESERVED,
            "a": answer["amount"],
            "mode": answer["mode"],
            "t": answer["tier"],
            "m": answer["member"],
            "answer": raw,
        }


_SETTLED_PARTS = 1 + len(Op.SETTLED_FIELDS)  # "S" and the fields


class Ledger:
    """Fields of a ledger stream entry, its kinds and sources."""

    FIELDS: Final = (
        "op",
        "kind",
        "ts",
        "period",
        "member",
        "tier",
        "mode",
        "model",
        "cost",
        "balance_delta",
        "usage",
        "source",
        "estimated",  # "1" on a charge made on the estimate rule; absent otherwise
    )
    # a usage entry as settle.lua writes it: "op", "u" (these fields joined by "|", the
    # member last), "model", "usage" (unpack); four fields where there were thirteen, which
    # is 22 arguments less for Redis to take in on each settlement
    PACKED: Final = "u"
    PACKED_FIELDS: Final = (
        "ts",
        "period",
        "mode",
        "cost",
        "balance_delta",
        "source",
        "estimated",  # "1" or "0"; unpacked, "0" is left out as before
        "tier",
        "member",
    )
    USAGE: Final = "usage"
    PURCHASE: Final = "purchase"
    RELOAD: Final = "reload"
    KINDS: Final = (USAGE, PURCHASE, RELOAD)
    SOURCES: Final = ("proxy", "check", "journal")  # a credit's source is its actor

    @staticmethod
    def unpack(entry: dict[str, str]) -> dict[str, str]:
        """An entry with every field of ``FIELDS`` by name: a packed usage entry unpacked
        (an entry written by an earlier version, field by field, is returned as it is)."""
        packed = entry.pop(Ledger.PACKED, None)
        if packed is None:
            return entry
        values = packed.split("|", len(Ledger.PACKED_FIELDS) - 1)
        entry.update(zip(Ledger.PACKED_FIELDS, values, strict=True))
        entry["kind"] = Ledger.USAGE
        if entry["estimated"] != ON:
            del entry["estimated"]
        return entry


class Audit:
    """Fields of an audit stream entry, and the actions the scripts write themselves."""

    FIELDS: Final = ("ts", "actor", "action", "before", "after")
    # what the scripts' own entries carry in before / after (write.lua: the fields it wrote)
    SCRIPT_PAYLOAD: Final = ("member", "id", "balance")
    SCRIPT_ACTIONS: Final = (
        "credit.purchase",
        "credit.reload_confirm",
        "key.issue",
        "key.revoke",
        "admin_token.issue",
        "admin_token.revoke",
    )


# -- what a script answers when it refuses ({"ok": 0, "err": <code>, "detail": ...}) -----
REFUSALS: Final = Refusal.ALL
REPLY_STATUS: Final = ("ok", "err", "detail")


def in_period(fields: Mapping[str, str], period_field: str, value_field: str, period: str) -> int:
    """A monthly counter's value in ``period``: 0 once the month moved on (lib.lua's
    ``in_period`` is the same rule inside the scripts)."""
    if fields.get(period_field) != period:
        return 0
    return int(fields.get(value_field) or 0)


def consent_of(settings: Mapping[str, str]) -> str:
    """The org's consent policy: its own, else its plan's default."""
    return settings.get(Org.CONSENT) or DEFAULT_CONSENT.get(settings.get(Org.PLAN, ""), "")


def lua_prelude() -> str:
    """The defaults as Lua locals (plain strings: no table built per call), prepended to
    every script after lib.lua."""
    consent = "".join(
        f"local DEFAULT_CONSENT_{plan.upper()} = '{value}'\n"
        for plan, value in DEFAULT_CONSENT.items()
    )
    return (
        "-- generated by proxy/storage/model.py (lua_prelude): the data model's defaults\n"
        + consent
        + f"local DEFAULT_REQUESTS_ON = '{DEFAULT_REQUESTS_ON}'\n"
        + f"local DEFAULT_ROLE = '{DEFAULT_ROLE}'\n"
    )


def vocabulary() -> frozenset[str]:
    """Every word the scripts may spell: field names (prefixes included), states, codes,
    encodings and values. The data-model test checks the Lua against it."""
    words_: set[str] = set(words()) | set(REPLY_STATUS) | {ON, OFF}
    for holder in (Org, Member, Cred, Op):
        words_ |= {v for k, v in vars(holder).items() if k.isupper() and isinstance(v, str)}
    words_ |= set(Member.VIEW) | set(Op.STATES) | set(Op.FIELDS) | set(Op.RELOAD_FIELDS)
    words_ |= {kind + Cred.BY_HASH for kind in Cred.KINDS} | {k + Cred.BY_ID for k in Cred.KINDS}
    words_ |= set(Ledger.FIELDS) | set(Ledger.KINDS) | set(Ledger.SOURCES) | {Ledger.PACKED}
    words_ |= set(Audit.FIELDS) | set(Audit.SCRIPT_ACTIONS) | set(Audit.SCRIPT_PAYLOAD)
    return frozenset(words_)
