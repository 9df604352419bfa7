"""Input validation for the JSON APIs: errors that name the field, nothing changed. Pure."""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.core.errors import InvalidRequest
from proxy.core.money import AmountError, parse_usd

# the largest amount a Lua double holds exactly as nano-USD is ~$9M; keep well inside it
MAX_AMOUNT = 1_000_000 * 1_000_000_000


def parse_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object, or a 400 that says what is wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidRequest("request body must be a JSON object")
    return doc


def only(doc: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise InvalidRequest(f"{extra[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


def string(
    doc: dict[str, Any],
    name: str,
    *,
    required: bool = True,
    max_len: int = 200,
    default: str | None = None,
) -> str | None:
    if name not in doc or doc[name] is None:
        if required:
            raise InvalidRequest(f"{name}: field required")
        return default
    value = doc[name]
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: must be a string")
    if not value.strip(" \t\r\n") or len(value) > max_len:
        raise InvalidRequest(f"{name}: must be 1 to {max_len} characters")
    return value


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def env_name(doc: dict[str, Any], name: str) -> str | None:
    """The name of an environment variable (where a secret lives), or None when absent."""
    value = string(doc, name, required=False, max_len=128)
    if value is not None and not ENV_NAME.match(value):
        raise InvalidRequest(f"{name}: must name an environment variable (letters, digits, _)")
    return value


def choice(
    doc: dict[str, Any], name: str, choices: tuple[str, ...], *, required: bool = True
) -> str | None:
    value = string(doc, name, required=required)
    if value is not None and value not in choices:
        raise InvalidRequest(f"{name}: must be one of {', '.join(choices)} (got {value!r})")
    return value


def boolean(
    doc: dict[str, Any], name: str, *, required: bool = True, default: bool | None = None
) -> bool | None:
    if name not in doc:
        if required:
            raise InvalidRequest(f"{name}: field required")
        return default
    value = doc[name]
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name}: must be true or false")
    return value


CENT = 10_000_000  # nano-USD


def amount(value: Any, name: str, *, allow_zero: bool = True) -> int:
    """A decimal USD string (or integer dollars) as nano-USD, in whole cents (what an owner
    types: a limit, a purchase, a grant); floats, negatives and fractions of a cent refused."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)  # JSON has one number type: 12.0 is exactly 12 dollars
    if isinstance(value, float):
        raise InvalidRequest(f'{name}: must be a decimal string such as "12.50", not a float')
    try:
        nano = parse_usd(value, field=name)
    except AmountError as exc:
        raise InvalidRequest(str(exc)) from exc
    if nano % CENT:
        raise InvalidRequest(
            f'{name}: at most 2 decimals (whole cents), such as "12.35" (got {value!r})'
        )
    if nano == 0 and not allow_zero:
        raise InvalidRequest(f"{name}: must be greater than 0")
    if nano > MAX_AMOUNT:
        raise InvalidRequest(f"{name}: must be at most 1000000.00")
    return nano


def limit(doc: dict[str, Any], name: str) -> int | None:
    """A spend limit: an amount, or null for unlimited. Field must be present."""
    if name not in doc:
        raise InvalidRequest(
            f'{name}: field required (an amount such as "500.00", or null for unlimited)'
        )
    value = doc[name]
    return None if value is None else amount(value, name)
