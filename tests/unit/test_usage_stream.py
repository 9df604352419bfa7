from __future__ import annotations

import orjson
import pytest

from proxy.core.sse import SSEParser
from proxy.core.usage import StreamUsage, body_usage, estimate, response_usage


def event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


STREAM = b"".join(
    [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "model": "claude-sonnet-4-5-20250929",
                    "usage": {
                        "input_tokens": 120,
                        "cache_creation_input_tokens": 30,
                        "cache_read_input_tokens": 400,
                        "output_tokens": 1,
                        "cache_creation": {
                            "ephemeral_5m_input_tokens": 10,
                            "ephemeral_1h_input_tokens": 20,
                        },
                    },
                },
            },
        ),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        b'event: ping\ndata: {"type": "ping"}\n\n',
        event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "héllo wörld ✓"},
            },
        ),
        event("some_future_event", {"type": "some_future_event", "x": 1}),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {
                    "output_tokens": 77,
                    "input_tokens": 150,
                    "server_tool_use": {"web_search_requests": 2},
                },
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
)


def check(u: StreamUsage) -> None:
    usage = u.usage()
    assert usage.input_tokens == 150  # message_delta raised it: usage there is cumulative
    assert usage.output_tokens == 77
    assert usage.cache_creation_input_tokens == 30
    assert usage.cache_read_input_tokens == 400
    assert usage.cache_writes() == (10, 20)
    assert usage.web_search_requests == 2
    assert u.model == "claude-sonnet-4-5-20250929"
    assert u.complete


def test_whole_stream() -> None:
    u = StreamUsage()
    u.feed(STREAM)
    check(u)


def test_split_at_every_byte_boundary() -> None:
    for cut in range(1, len(STREAM)):
        u = StreamUsage()
        u.feed(STREAM[:cut])
        u.feed(STREAM[cut:])
        check(u)


def test_one_byte_at_a_time() -> None:
    u = StreamUsage()
    for i in range(len(STREAM)):
        u.feed(STREAM[i : i + 1])
    check(u)


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_other_line_endings_split_everywhere(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    for cut in range(1, len(stream), 7):
        u = StreamUsage()
        u.feed(stream[:cut])
        u.feed(stream[cut:])
        check(u)


def test_an_event_larger_than_any_line_limit() -> None:
    big = "x" * (3 * 1024 * 1024)
    stream = event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": big}},
    )
    u = StreamUsage()
    for i in range(0, len(stream), 65536):
        u.feed(stream[i : i + 65536])
    assert u.usage().output_tokens == len(big) // 4


def test_output_is_estimated_from_text_when_no_message_delta_came() -> None:
    cut = STREAM.index(b"event: some_future_event")
    u = StreamUsage()
    u.feed(STREAM[:cut])
    usage = u.usage()
    assert usage.input_tokens == 120
    assert usage.output_tokens == 4  # 13 characters, ~4 a token, rounded up
    assert not u.complete


def test_error_event_is_noticed() -> None:
    u = StreamUsage()
    u.feed(STREAM[: STREAM.index(b"event: content_block_stop")])
    u.feed(event("error", {"type": "error", "error": {"type": "overloaded_error"}}))
    assert u.errored
    assert u.usage().input_tokens == 120


def test_parser_multiline_data_and_comments() -> None:
    p = SSEParser()
    events = p.feed(b": comment\nevent: a\ndata: one\ndata: two\n\nda")
    assert events == [("a", b"one\ntwo")]
    assert p.feed(b"ta: x\n\n") == [("message", b"x")]


def test_response_usage() -> None:
    body = orjson.dumps({"model": "m1", "usage": {"input_tokens": 5, "output_tokens": 6}})
    usage, model = response_usage(body)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, model) == (5, 6, "m1")
    assert response_usage(b"not json") == (None, None)
    assert response_usage(b"[]") == (None, None)
    assert response_usage(b'{"model": "m", "usage": {"input_tokens": -1}}') == (None, "m")
    assert response_usage(b'{"usage": 3}') == (None, None)


def test_an_estimate_never_counts_more_output_than_max_tokens() -> None:
    """Text of ~6 characters a token would be counted 1.5× at 4: the estimate is capped at
    the request's max_tokens, what the reservation bounded."""
    cut = STREAM.index(b"event: some_future_event")
    u = StreamUsage()
    u.feed(STREAM[:cut])
    assert u.usage(max_output=3).output_tokens == 3  # 13 characters would be 4
    assert u.usage(max_output=100).output_tokens == 4
    text = b'{"content":[{"type":"text","text":"' + b"word " * 400  # cut: no usage
    usage, _, estimated = body_usage(text, 40, max_output=50)
    assert estimated and usage is not None and usage.output_tokens == 50
    assert (
        estimate(None, output_reported=False, text_chars=4000, prompt_bytes=8).output_tokens == 1000
    )
