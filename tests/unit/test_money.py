from __future__ import annotations

import pytest

from proxy.core.money import AmountError, format_usd, parse_usd


@pytest.mark.parametrize(
    ("text", "nano"),
    [
        ("12.50", 12_500_000_000),
        ("3", 3_000_000_000),
        (7, 7_000_000_000),
        ("0", 0),
        ("0.000000001", 1),
        ("1000000.123456789", 1_000_000_123_456_789),
    ],
)
def test_parse(text: object, nano: int) -> None:
    assert parse_usd(text) == nano


@pytest.mark.parametrize("bad", ["-1", "1.0000000001", "abc", "", "1e3", 1.5, True, None, "01"])
def test_parse_refuses(bad: object) -> None:
    with pytest.raises(AmountError):
        parse_usd(bad)


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (12_500_000_000, "12.50"),
        (0, "0.00"),
        (1, "0.000000001"),
        (123_000, "0.000123"),
        (-2_500_000_000, "-2.50"),
        (40_000_000_000, "40.00"),
    ],
)
def test_format(nano: int, text: str) -> None:
    assert format_usd(nano) == text
    assert parse_usd(text.lstrip("-")) == abs(nano)
