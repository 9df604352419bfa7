"""The header policy of the proxy routes: what goes upstream and what comes back.

The member's key never goes upstream: the org's upstream credential replaces it.
``anthropic-*`` and unknown headers pass through unchanged; hop-by-hop headers are dropped
both ways; the framing (``content-length``) is recomputed for each side.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# never sent upstream: our credentials and framing the client session recomputes
DROP_REQUEST = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "accept-encoding",  # the API answers unencoded: the proxy reads the usage in it
    "expect",  # the body is sent at once; an interim 100 would only cost a round trip
    "x-extra-usage",
    "content-encoding",  # the body goes upstream decoded (proxy.http.body)
}
# never copied back: the framing, recomputed for the member (a gzip or deflate body arrives
# decoded, without its Content-Encoding: proxy.upstream.client)
DROP_RESPONSE = HOP_BY_HOP | {"content-length"}


# what Connection usually says: options, not names of headers to drop
_CONNECTION_OPTIONS = frozenset({"keep-alive", "close", "upgrade", "te", ""})


def upstream_headers(incoming: CIMultiDictProxy[str], api_key: str) -> list[tuple[str, str]]:
    """The member's headers as the API gets them, with the org's key. Headers the member's
    ``Connection`` names are hop-by-hop too (RFC 9110 §7.6.1): dropped."""
    drop = DROP_REQUEST
    if "connection" in incoming:  # every Connection header: a second one names headers too
        named = {
            t.strip().lower() for c in incoming.getall("connection") for t in c.split(",")
        } - _CONNECTION_OPTIONS
        if named:
            drop = drop | named
    out = [(name, value) for name, value in incoming.items() if name.lower() not in drop]
    out.append(("x-api-key", api_key))
    return out


def response_headers(upstream: Mapping[str, str] | CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The API's headers as the member gets them."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in DROP_RESPONSE:
            out.add(name, value)
    return out
