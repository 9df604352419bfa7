from __future__ import annotations

import orjson
import pytest

from proxy.errors import InvalidRequest
from proxy.request_body import LAZY_PARSE_FROM, parse_message_request

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
