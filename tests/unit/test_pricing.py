from __future__ import annotations

import pytest

from proxy.config import ConfigError, load_default_prices, parse_config
from proxy.core.pricing import PriceTable, Usage, UsageError, usage_from_mapping


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return parse_config({}, "<t>", {}).prices


# family -> (input, output, 5m write, 1h write, cache read) in nano-USD per token
EXPECTED = {
    "claude-fable-5-1": (10_000, 50_000, 12_500, 20_000, 250),
    "claude-opus-5-5": (4_000, 20_000, 5_000, 8_000, 200),
    "claude-opus-4-6": (5_000, 25_000, 6_250, 10_000, 500),
    "claude-opus-4-5": (5_000, 25_000, 6_250, 10_000, 500),
    "claude-opus-4-1": (15_000, 75_000, 18_750, 30_000, 1_500),
    "claude-opus-4-0": (15_000, 75_000, 18_750, 30_000, 1_500),
    "claude-sonnet-5-5": (2_000, 10_000, 2_500, 4_000, 100),
    "claude-sonnet-4-6": (3_000, 15_000, 3_750, 6_000, 300),
    "claude-sonnet-4-5": (3_000, 15_000, 3_750, 6_000, 300),
    "claude-sonnet-4-0": (3_000, 15_000, 3_750, 6_000, 300),
    "claude-haiku-5-5": (100, 500, 125, 200, 10),
    "claude-haiku-4-5": (1_000, 5_000, 1_250, 2_000, 100),
    "claude-3-5-haiku": (800, 4_000, 1_000, 1_600, 80),
    "claude-3-haiku": (250, 1_250, 300, 500, 30),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_each_token_kind_of_each_family(prices: PriceTable, family: str) -> None:
    i, o, w5, w1, r = EXPECTED[family]
    assert prices.cost(family, Usage(input_tokens=1)) == i
    assert prices.cost(family, Usage(output_tokens=1)) == o
    assert prices.cost(family, Usage(cache_creation_input_tokens=1)) == w5
    one_hour = Usage(cache_creation_input_tokens=1, cache_creation_5m=0, cache_creation_1h=1)
    assert prices.cost(family, one_hour) == w1
    assert prices.cost(family, Usage(cache_read_input_tokens=1)) == r
    assert prices.cost(family, Usage(web_search_requests=1)) == 10_000_000  # $10 / 1000


def test_every_shipped_family_is_priced(prices: PriceTable) -> None:
    assert set(load_default_prices()) == set(prices.families)


def test_a_mixed_request_is_an_exact_integer_sum(prices: PriceTable) -> None:
    usage = Usage(
        input_tokens=1234,
        output_tokens=567,
        cache_creation_input_tokens=1000,
        cache_creation_5m=400,
        cache_creation_1h=600,
        cache_read_input_tokens=9999,
        web_search_requests=2,
    )
    expected = 1234 * 3000 + 567 * 15000 + 400 * 3750 + 600 * 6000 + 9999 * 300 + 2 * 10**7
    assert prices.cost("claude-sonnet-4-5-20250929", usage) == expected


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5[1m]", "claude-sonnet-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4-0"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
    ],
)
def test_dated_ids_and_aliases_map_to_their_family(
    prices: PriceTable, model: str, family: str
) -> None:
    price = prices.resolve(model)
    assert price.known
    assert price.family.name == family


def test_long_context_prices_every_token_at_the_higher_rate(prices: PriceTable) -> None:
    at = Usage(input_tokens=200_000, output_tokens=10)
    over = Usage(input_tokens=150_000, cache_read_input_tokens=50_001, output_tokens=10)
    assert prices.cost("claude-sonnet-4-5", at) == 200_000 * 3000 + 10 * 15000
    assert prices.cost("claude-sonnet-4-5", over) == 150_000 * 6000 + 50_001 * 600 + 10 * 22500
    # a family without long-context pricing keeps its rate
    assert prices.cost("claude-opus-4-6", Usage(input_tokens=300_000)) == 300_000 * 5000


def test_unknown_model_is_priced_at_the_most_expensive_family(prices: PriceTable) -> None:
    price = prices.resolve("claude-nonesuch-9")
    assert not price.known
    assert price.family.name == "claude-opus-4-1"
    assert prices.cost("claude-nonesuch-9", Usage(output_tokens=1)) == 75_000


def test_unknown_model_default_is_configurable() -> None:
    table = parse_config({"pricing": {"unknown_model": "claude-haiku-4-5"}}, "<t>", {}).prices
    assert table.cost("mystery", Usage(output_tokens=2)) == 10_000


def test_config_overrides_and_adds_families() -> None:
    doc = {
        "prices": {
            "claude-sonnet-4-5": {
                "input": "3.5",
                "output": "15",
                "cache_write_5m": "3.75",
                "cache_write_1h": "6",
                "cache_read": "0.03",
            },
            "my-model": {
                "input": "1",
                "output": "2",
                "cache_write_5m": "1",
                "cache_write_1h": "1",
                "cache_read": "0.001",
                "aliases": ["my-alias"],
            },
        }
    }
    table = parse_config(doc, "<t>", {}).prices
    assert (
        table.cost("claude-sonnet-4-5", Usage(input_tokens=1, cache_read_input_tokens=1))
        == 3500 + 30
    )
    assert table.cost("my-alias", Usage(cache_read_input_tokens=3)) == 3


def test_a_price_finer_than_a_nano_dollar_per_token_is_refused() -> None:
    doc = {
        "prices": {
            "x": {
                "input": "0.0001",
                "output": "1",
                "cache_write_5m": "1",
                "cache_write_1h": "1",
                "cache_read": "1",
            }
        }
    }
    with pytest.raises(ConfigError, match=r"prices.x.input must be a multiple of \$0.001"):
        parse_config(doc, "cfg.toml", {})


def test_max_cost_bounds_any_actual_cost(prices: PriceTable) -> None:
    # every prompt token at the dearest prompt rate, every output token at max_tokens
    bound = prices.max_cost("claude-sonnet-4-5", 1000, 100)
    worst = Usage(
        input_tokens=0,
        cache_creation_input_tokens=1000,
        cache_creation_5m=0,
        cache_creation_1h=1000,
        output_tokens=100,
    )
    assert prices.cost("claude-sonnet-4-5", worst) <= bound
    assert bound == 1000 * 6000 + 100 * 15000


def test_usage_from_mapping_validates() -> None:
    u = usage_from_mapping(
        {
            "input_tokens": 3,
            "output_tokens": 4,
            "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": 2},
            "server_tool_use": {"web_search_requests": 1},
        }
    )
    assert (u.input_tokens, u.output_tokens, u.cache_writes(), u.web_search_requests) == (
        3,
        4,
        (1, 2),
        1,
    )
    with pytest.raises(UsageError, match=r"usage\.output_tokens"):
        usage_from_mapping({"output_tokens": -1})
    with pytest.raises(UsageError, match=r"usage\.input_tokens"):
        usage_from_mapping({"input_tokens": "12"})


@pytest.mark.parametrize(
    ("model", "family", "line"),
    [
        ("claude-haiku-6", "claude-haiku-5-5", "haiku"),
        ("claude-sonnet-5-6", "claude-sonnet-5-5", "sonnet"),
        ("claude-opus-6", "claude-opus-5-5", "opus"),
        ("claude-3-9-haiku", "claude-haiku-5-5", "haiku"),  # the old naming
        ("claude-haiku-6-20270101", "claude-haiku-5-5", "haiku"),
    ],
)
def test_an_id_newer_than_the_table_is_priced_by_its_line(
    prices: PriceTable, model: str, family: str, line: str
) -> None:
    price = prices.resolve(model)
    assert (price.family.name, price.known, price.line) == (family, False, line)
    # the same cost as the line's newest family, never the dearest family's
    assert prices.cost(model, Usage(input_tokens=1000)) == prices.cost(
        family, Usage(input_tokens=1000)
    )


def test_only_an_id_of_no_known_line_gets_the_default(prices: PriceTable) -> None:
    for model in ("gpt-5", "claude-nonesuch-9", "mystery"):
        price = prices.resolve(model)
        assert (price.family.name, price.line) == ("claude-opus-4-1", "")


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": 9007199254740993},
        {"output_tokens": 100_000_001},
        {"cache_creation": {"ephemeral_5m_input_tokens": 10**12}},
        {"server_tool_use": {"web_search_requests": 10**9}},
    ],
)
def test_a_count_that_could_break_exact_money_is_refused(usage: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="must be at most 100,000,000"):
        usage_from_mapping(usage)
