"""Model prices and the cost of a request, in integer nano-USD. Pure: no I/O.

A price is an exact integer of nano-USD per token ($3/MTok = 3000), so a request's cost is
an exact integer sum: no floats, no rounding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.core.money import AmountError, parse_usd, usd_per_mtok_to_nano_per_token

_DATE_SUFFIX = re.compile(r"-(?:\d{8}|latest)$")
_CONTEXT_SUFFIX = re.compile(r"\[[0-9]+[km]\]$")


@dataclass(frozen=True, slots=True)
class Rates:
    """Nano-USD per token, by kind of token."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int

    @property
    def max_prompt(self) -> int:
        """The highest rate any prompt token can be billed at (an upper bound for one token)."""
        return max(self.input, self.cache_write_5m, self.cache_write_1h, self.cache_read)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    rates: Rates
    web_search: int  # nano-USD per server-side web search request
    long_context_threshold: int | None = None
    long_context: Rates | None = None
    aliases: tuple[str, ...] = ()

    def rates_for(self, prompt_tokens: int) -> Rates:
        """The rates that apply to a request whose prompt has ``prompt_tokens`` tokens."""
        if (
            self.long_context is not None
            and self.long_context_threshold is not None
            and prompt_tokens > self.long_context_threshold
        ):
            return self.long_context
        return self.rates


@dataclass(slots=True)
class Usage:
    """Token counts as the Messages API reports them in ``usage``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # from usage.cache_creation, when the API gives the split by TTL
    cache_creation_5m: int | None = None
    cache_creation_1h: int | None = None
    web_search_requests: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def cache_writes(self) -> tuple[int, int]:
        """(5-minute, 1-hour) cache-write tokens; without the split, all are 5-minute."""
        if self.cache_creation_5m is None and self.cache_creation_1h is None:
            return self.cache_creation_input_tokens, 0
        return self.cache_creation_5m or 0, self.cache_creation_1h or 0

    @classmethod
    def from_dict(cls, d: Mapping[str, int]) -> Usage:
        """The inverse of ``as_dict``."""
        return cls(
            input_tokens=d["input_tokens"],
            output_tokens=d["output_tokens"],
            cache_creation_input_tokens=d["cache_creation_input_tokens"],
            cache_read_input_tokens=d["cache_read_input_tokens"],
            cache_creation_5m=d["cache_write_5m_tokens"],
            cache_creation_1h=d["cache_write_1h_tokens"],
            web_search_requests=d["web_search_requests"],
        )

    def as_dict(self) -> dict[str, int]:
        five, hour = self.cache_writes()
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_write_5m_tokens": five,
            "cache_write_1h_tokens": hour,
            "web_search_requests": self.web_search_requests,
        }


class UsageError(ValueError):
    """A usage object that is not a set of non-negative integer token counts."""


# the most tokens (or searches) of one kind one request may report: far above any real request,
# and low enough that a cost at the dearest rate stays an exact integer in Lua's doubles
# (5 kinds x 10^8 tokens x $150/MTok = $75,000, under 2^53 nano-USD ~ $9M)
MAX_COUNT = 100_000_000


def _count(container: Mapping[str, object], key: str, where: str) -> int:
    value = container.get(key, 0)
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 12.0 is the integer 12
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{where}{key} must be a non-negative integer")
    if value > MAX_COUNT:
        raise UsageError(f"{where}{key} must be at most {MAX_COUNT:,} (got {value:,})")
    return value


def usage_from_mapping(data: Mapping[str, object]) -> Usage:
    """Build a Usage from an API ``usage`` object, refusing negative or non-integer counts."""
    usage = Usage(
        input_tokens=_count(data, "input_tokens", "usage."),
        output_tokens=_count(data, "output_tokens", "usage."),
        cache_creation_input_tokens=_count(data, "cache_creation_input_tokens", "usage."),
        cache_read_input_tokens=_count(data, "cache_read_input_tokens", "usage."),
    )
    split = data.get("cache_creation")
    if isinstance(split, Mapping):
        where = "usage.cache_creation."
        usage.cache_creation_5m = _count(split, "ephemeral_5m_input_tokens", where)
        usage.cache_creation_1h = _count(split, "ephemeral_1h_input_tokens", where)
    elif split is not None:
        raise UsageError("usage.cache_creation must be an object")
    tools = data.get("server_tool_use")
    if isinstance(tools, Mapping):
        usage.web_search_requests = _count(tools, "web_search_requests", "usage.server_tool_use.")
    elif tools is not None:
        raise UsageError("usage.server_tool_use must be an object")
    return usage


RESOLVED_CACHE = 4096


@dataclass(frozen=True, slots=True)
class Price:
    """A resolved model: its family, whether the id was known to the table, and for an id
    that was not, the model line it named ("opus", "sonnet", …; "" for none the table has)."""

    family: Family
    known: bool
    line: str = ""


def model_line(name: str) -> str:
    """A family's or a model id's line: its word that is not "claude" nor a version
    ("claude-sonnet-4-5", "claude-3-7-sonnet": "sonnet"); "" when it has none."""
    for word in name.lower().split("-"):
        if word.isalpha() and word not in ("claude", "latest"):
            return word
    return ""


def _version(name: str) -> tuple[int, ...]:
    """A family's version, from the numbers in its name: (4, 5) for claude-sonnet-4-5."""
    return tuple(int(w) for w in name.split("-") if w.isdigit() and len(w) < 8)


@dataclass(slots=True)
class PriceTable:
    families: dict[str, Family]
    unknown_model: str
    _index: dict[str, Family] = field(default_factory=dict, repr=False)
    # model ids as clients send them -> resolved (bounded: ids come from requests)
    _resolved: dict[str, Price] = field(default_factory=dict, repr=False)
    # each model line's newest family: what an id of that line newer than the table costs
    _newest: dict[str, Family] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for fam in self.families.values():
            self._index[fam.name] = fam
            for alias in fam.aliases:
                self._index[alias] = fam
            line = model_line(fam.name)
            if line:
                best = self._newest.get(line)
                if best is None or _version(fam.name) > _version(best.name):
                    self._newest[line] = fam
        if self.unknown_model not in self.families:
            raise ValueError(f"unknown_model {self.unknown_model!r} is not a family of the table")

    def resolve(self, model: str) -> Price:
        """Map a model id (dated, aliased, with a context suffix) to its family."""
        price = self._resolved.get(model)
        if price is not None:
            return price
        fam = self._index.get(model)
        if fam is None:
            base = _CONTEXT_SUFFIX.sub("", model)
            fam = self._index.get(base) or self._index.get(_DATE_SUFFIX.sub("", base))
        if fam is None:
            # newer than the table: priced as its line's newest family (a Haiku is never
            # charged at Opus rates); only an id of no line the table has gets the default
            line = model_line(model)
            newest = self._newest.get(line)
            if newest is not None:
                price = Price(newest, known=False, line=line)
            else:
                price = Price(self.families[self.unknown_model], known=False)
        else:
            price = Price(fam, known=True)
        if len(self._resolved) < RESOLVED_CACHE:
            self._resolved[model] = price
        return price

    def cost(self, model: str, usage: Usage) -> int:
        """The exact cost of a request in nano-USD."""
        return cost_of(self.resolve(model).family, usage)

    def max_cost(self, model: str, prompt_tokens_bound: int, max_tokens: int) -> int:
        """An upper bound of a request's cost: every prompt token at the highest prompt rate."""
        fam = self.resolve(model).family
        rates = fam.rates_for(prompt_tokens_bound)
        return prompt_tokens_bound * rates.max_prompt + max_tokens * rates.output

    def estimate(self, model: str, prompt_tokens: int, max_tokens: int) -> int:
        """An estimate of a request's cost: prompt tokens at the input rate, max_tokens out."""
        fam = self.resolve(model).family
        rates = fam.rates_for(prompt_tokens)
        return prompt_tokens * rates.input + max_tokens * rates.output


def cost_of(family: Family, usage: Usage) -> int:
    rates = family.rates_for(usage.prompt_tokens)
    five, hour = usage.cache_writes()
    return (
        usage.input_tokens * rates.input
        + usage.output_tokens * rates.output
        + five * rates.cache_write_5m
        + hour * rates.cache_write_1h
        + usage.cache_read_input_tokens * rates.cache_read
        + usage.web_search_requests * family.web_search
    )


_RATE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


def _rates(raw: Mapping[str, object], where: str) -> Rates:
    values: dict[str, int] = {}
    for name in _RATE_FIELDS:
        if name not in raw:
            raise ValueError(f"{where}.{name} is missing")
        try:
            values[name] = usd_per_mtok_to_nano_per_token(raw[name], field=f"{where}.{name}")
        except AmountError as exc:
            raise ValueError(str(exc)) from exc
    return Rates(**values)


def family_from_toml(name: str, raw: Mapping[str, object], where: str) -> Family:
    """Build one family from its TOML table; errors name the field."""
    allowed = {*_RATE_FIELDS, "web_search", "aliases", "long_context"}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    rates = _rates(raw, where)
    try:
        web_search = parse_usd(raw.get("web_search", "0.01"), field=f"{where}.web_search")
    except AmountError as exc:
        raise ValueError(str(exc)) from exc
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"{where}.aliases must be a list of model ids")
    threshold: int | None = None
    long_rates: Rates | None = None
    long = raw.get("long_context")
    if long is not None:
        if not isinstance(long, Mapping):
            raise ValueError(f"{where}.long_context must be a table")
        t = long.get("threshold_tokens")
        if isinstance(t, bool) or not isinstance(t, int) or t <= 0:
            raise ValueError(f"{where}.long_context.threshold_tokens must be a positive integer")
        threshold = t
        long_rates = _rates(
            {k: v for k, v in long.items() if k != "threshold_tokens"}, f"{where}.long_context"
        )
    return Family(name, rates, web_search, threshold, long_rates, tuple(aliases))


def most_expensive(families: Mapping[str, Family]) -> str:
    """The family with the highest output rate, then input rate: the safe default."""
    return max(families.values(), key=lambda f: (f.rates.output, f.rates.input, f.name)).name
