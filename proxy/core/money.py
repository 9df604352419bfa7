"""Money as integers of nano-USD (1 USD = 10**9), and its decimal-string form in the APIs.

Pure: no I/O. Every amount the product stores, compares or adds is an ``int`` of nano-USD;
decimal strings exist only at the edges (config, JSON in and out).
"""

from __future__ import annotations

import re

NANO_PER_USD = 1_000_000_000

_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,11})(?:\.([0-9]{1,9}))?\Z")


class AmountError(ValueError):
    """A money amount that is not a non-negative decimal USD string with at most 9 decimals."""


def parse_usd(value: object, *, field: str = "amount") -> int:
    """Parse a decimal USD amount ("12.50", "3", 12 or "0.000000001") into nano-USD.

    Floats are refused: they cannot carry an exact decimal amount.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise AmountError(f'{field} must be a decimal string in USD such as "12.50"')
    text = str(value)  # as sent: an amount padded with spaces, NBSP or a newline is refused
    match = _AMOUNT.match(text)
    if match is None:
        if text.startswith("-"):
            raise AmountError(f"{field} must not be negative (got {text!r})")
        if re.match(r"^[0-9]+\.[0-9]{10,}\Z", text):
            raise AmountError(f"{field} has more than 9 decimal places (got {text!r})")
        raise AmountError(f'{field} must be a decimal amount in USD such as "12.50" (got {text!r})')
    whole, frac = match.group(1), match.group(2) or ""
    return int(whole) * NANO_PER_USD + int(frac.ljust(9, "0"))


def format_usd(nano: int) -> str:
    """Format nano-USD as a decimal USD string with at least two decimals ("12.50", "0.000123")."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    digits = f"{frac:09d}".rstrip("0")
    if len(digits) < 2:
        digits = digits.ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def stored_usd(value: str | None) -> str | None:
    """A stored amount (a decimal string of nano-USD) as the APIs show it; None when it is
    absent or empty (no limit, nothing asked)."""
    return None if value in (None, "") else format_usd(int(value))


def usd_per_mtok_to_nano_per_token(value: object, *, field: str) -> int:
    """A price in USD per million tokens as an exact integer of nano-USD per token.

    $3/MTok is 3000 nano-USD a token; $0.03/MTok is exactly 30. A price finer than
    $0.001/MTok cannot be an integer per token and is refused.
    """
    nano_per_mtok = parse_usd(value, field=field)
    per_token, remainder = divmod(nano_per_mtok, 1_000_000)
    if remainder:
        raise AmountError(
            f"{field} must be a multiple of $0.001 per million tokens (got {value!r})"
        )
    return per_token
