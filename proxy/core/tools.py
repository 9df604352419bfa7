"""What a request may cost beyond its body and its ``max_tokens``: the server tools the API
runs for it — web search, priced per search, and web fetch, whose pages are billed as input —
and the inputs the API fetches itself (documents and images given by URL). Pure.

``ToolBounds`` is what admission adds to a request's bound: the most searches, the most
input tokens fetched, and, when something has no bound (a tool without its limits, a URL
input), why — strict then refuses to run the request on extra usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.core.errors import InvalidRequest
from proxy.core.validate import parse_object

# the most web searches, and web-fetched input tokens, one request may ask for in all: far
# above any real request, and low enough that the bound stays a small exact integer
MAX_SEARCHES = 10_000
MAX_FETCHED_TOKENS = 100_000_000


@dataclass(frozen=True, slots=True)
class ToolBounds:
    searches: int = 0  # web searches, at most
    fetched_tokens: int = 0  # input tokens that web fetch may bring, at most
    unbounded: str = ""  # what has no bound ("" when every cost of the request has one)


NO_TOOLS = ToolBounds()
_UNBOUNDED_SEARCH = "a web search tool without max_uses"
_UNBOUNDED_FETCH = "a web fetch tool without max_uses and max_content_tokens"
_URL_INPUT = "a document or image given by URL"


def _limit(tool: dict[str, Any], name: str, where: str, high: int) -> int | None:
    value = tool.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise InvalidRequest(f"{where}.{name}: must be an integer from 1 to {high:,}")
    return value


def tool_bounds(tools: object, field: str = "tools") -> ToolBounds:
    """The bounds of a Messages API ``tools`` list (None: no tools)."""
    if tools is None:
        return NO_TOOLS
    if not isinstance(tools, list):
        raise InvalidRequest(f"{field}: must be an array of tools")
    searches = fetched = 0
    unbounded: list[str] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        kind, where = str(tool.get("type", "")), f"{field}[{i}]"
        if kind.startswith("web_search"):
            uses = _limit(tool, "max_uses", where, 1000)
            if uses is None:
                unbounded.append(_UNBOUNDED_SEARCH)
            else:
                searches += uses
        elif kind.startswith("web_fetch"):
            uses = _limit(tool, "max_uses", where, 1000)
            cap = _limit(tool, "max_content_tokens", where, 1_000_000)
            if uses is None or cap is None:
                unbounded.append(_UNBOUNDED_FETCH)
            else:
                fetched += uses * cap
    if searches > MAX_SEARCHES:
        raise InvalidRequest(
            f"{field}: the web search tools' max_uses add up to {searches:,}; at most "
            f"{MAX_SEARCHES:,} in all"
        )
    if fetched > MAX_FETCHED_TOKENS:
        raise InvalidRequest(
            f"{field}: the web fetch tools may bring {fetched:,} tokens (max_uses × "
            f"max_content_tokens); at most {MAX_FETCHED_TOKENS:,} in all"
        )
    return ToolBounds(searches, fetched, "; ".join(dict.fromkeys(unbounded)))


def _has_url_source(content: object) -> bool:
    """Whether message content holds a block whose source the API fetches (a URL), tool
    results included."""
    if not isinstance(content, list):
        return False
    for block in content:
        if not isinstance(block, dict):
            continue
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "url":
            return True
        if _has_url_source(block.get("content")):
            return True
    return False


def request_bounds(body: bytes) -> ToolBounds:
    """The bounds of a Messages request: its tools and its URL inputs. The body is parsed
    again only when it names a server tool or a URL (rare)."""
    if b"web_search" not in body and b"web_fetch" not in body and b'"url"' not in body:
        return NO_TOOLS
    doc = parse_object(body)
    bounds = tool_bounds(doc.get("tools"))
    messages = doc.get("messages")
    fetched = isinstance(messages, list) and any(
        isinstance(m, dict) and _has_url_source(m.get("content")) for m in messages
    )
    if fetched:
        why = "; ".join(filter(None, (bounds.unbounded, _URL_INPUT)))
        bounds = ToolBounds(bounds.searches, bounds.fetched_tokens, why)
    return bounds
