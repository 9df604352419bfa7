"""What a request may cost beyond its body and max_tokens: server tools and URL inputs."""

from __future__ import annotations

import orjson
import pytest

from proxy.core.errors import InvalidRequest
from proxy.core.tools import MAX_SEARCHES, NO_TOOLS, request_bounds, tool_bounds


def body(*tools: dict[str, object], messages: object = ()) -> bytes:
    return orjson.dumps(
        {"model": "m", "max_tokens": 1, "tools": list(tools), "messages": list(messages)}  # type: ignore[call-overload]
    )


SEARCH = {"type": "web_search_20250305", "name": "web_search"}
FETCH = {"type": "web_fetch_20250910", "name": "web_fetch"}


def test_web_search_sums_max_uses_and_refuses_what_it_cannot_bound() -> None:
    assert request_bounds(orjson.dumps({"model": "m", "max_tokens": 1})) == NO_TOOLS
    bounds = request_bounds(body({**SEARCH, "max_uses": 3}, {**SEARCH, "max_uses": 4}))
    assert (bounds.searches, bounds.unbounded) == (7, "")
    assert request_bounds(body({"name": "web_search_lookalike", "input_schema": {}})).searches == 0
    assert request_bounds(body(SEARCH)).unbounded == "a web search tool without max_uses"
    for bad in (0, -1, "3", True, 1001):
        with pytest.raises(InvalidRequest, match=r"tools\[0\]\.max_uses"):
            request_bounds(body({**SEARCH, "max_uses": bad}))
    many = [{**SEARCH, "max_uses": 1000}] * (MAX_SEARCHES // 1000 + 1)
    with pytest.raises(InvalidRequest, match="add up to 11,000"):
        request_bounds(body(*many))


def test_web_fetch_brings_at_most_max_uses_times_max_content_tokens() -> None:
    bounds = request_bounds(body({**FETCH, "max_uses": 3, "max_content_tokens": 2000}))
    assert (bounds.fetched_tokens, bounds.unbounded) == (6000, "")
    for fetch in (FETCH, {**FETCH, "max_uses": 3}, {**FETCH, "max_content_tokens": 9}):
        assert "web fetch" in request_bounds(body(fetch)).unbounded
    with pytest.raises(InvalidRequest, match=r"tools\[0\]\.max_content_tokens"):
        request_bounds(body({**FETCH, "max_uses": 1, "max_content_tokens": 0}))
    assert tool_bounds(None) == NO_TOOLS
    with pytest.raises(InvalidRequest, match="tools: must be an array"):
        tool_bounds({"type": "web_search"})


def test_documents_and_images_by_url_have_no_bound() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
    doc = {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}
    inline = {"type": "image", "source": {"type": "base64", "data": "url"}}
    nested = {"type": "tool_result", "tool_use_id": "t", "content": [doc]}
    for content in ([image], [doc], [nested]):
        message = {"role": "user", "content": content}
        assert "by URL" in request_bounds(body(messages=[message])).unbounded
    text = {"role": "user", "content": [inline, {"type": "text", "text": '"url"'}]}
    assert request_bounds(body(messages=[text])).unbounded == ""
