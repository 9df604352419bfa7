from __future__ import annotations

import orjson
import pytest

from proxy.core.errors import InvalidRequest
from proxy.core.request_fields import LAZY_PARSE_FROM, REUSE_PARSER_UP_TO, parse_message_request

BIG = "x" * LAZY_PARSE_FROM


@pytest.mark.parametrize("text", ["hi", BIG])
def test_small_and_large_bodies_read_the_same(text: str) -> None:
    body = orjson.dumps(
        {
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "model": "claude-opus-4-6",
            "max_tokens": 128000,
        }
    )
    assert parse_message_request(body) == ("claude-opus-4-6", 128000, True)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            b'{"model": "m", "max_tokens": 1, "x": "' + BIG.encode() + b'", "max_tokens": 99}',
            "field more than once: max_tokens",
        ),
        (
            b'{"model": {"a": 1}, "max_tokens": 5, "x": "' + BIG.encode() + b'"}',
            "model: field required",
        ),
        (
            b'{"model": "m", "max_tokens": [5], "x": "' + BIG.encode() + b'"}',
            "max_tokens: must be an integer",
        ),
        (b'["' + BIG.encode() + b'"]', "must be a JSON object"),
        (b'{"model": "m", "x": "' + BIG.encode(), "not valid JSON"),
        (
            b'{"model": "m", "max_tokens": 5, "stream": "' + BIG.encode() + b'"}',
            "stream: must be true or false",
        ),
    ],
)
def test_large_bodies_are_validated_like_small_ones(body: bytes, needle: str) -> None:
    assert len(body) >= LAZY_PARSE_FROM
    with pytest.raises(InvalidRequest, match=needle):
        parse_message_request(body)


def test_the_shared_parser_serves_one_body_after_another() -> None:
    """Large bodies share one parser: a refused body, a nested field, a body too big to share
    it and a good body, in any order, each read on its own."""
    good = orjson.dumps({"model": "m", "max_tokens": 7, "x": BIG})
    nested = b'{"model": {"a": [1]}, "max_tokens": 5, "x": "' + BIG.encode() + b'"}'
    broken = b'{"model": "m", "x": "' + BIG.encode()
    huge = orjson.dumps({"model": "h", "max_tokens": 3, "x": "y" * (REUSE_PARSER_UP_TO + 1)})
    for body in (good, nested, broken, good, huge, nested, good):
        if body in (nested, broken):
            with pytest.raises(InvalidRequest):
                parse_message_request(body)
        else:
            model = "h" if body is huge else "m"
            assert parse_message_request(body)[0] == model
