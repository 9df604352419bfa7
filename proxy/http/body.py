"""Request bodies: read within the size limit, decoded within it too, and JSON objects for
the APIs.

aiohttp's own decoding is off (``auto_decompress=False``, set on the app): it would inflate
a compressed body whole before any limit applies (a 1 MiB gzip bomb took a worker to 390 MB)
and hand over the decoded body under its ``Content-Encoding``. Here a gzip or deflate body
is inflated piece by piece, refused with a 413 as soon as it passes the limit, and goes
upstream decoded (its ``Content-Encoding`` is not forwarded). What decoded bodies a process
holds at once is bounded too (``server.max_decoded_bytes_in_flight``, ``DecodedBodies``): a
29 KiB gzip body can decode to 30 MiB, so twenty of them would otherwise hold 600 MB.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from aiohttp import web

from proxy.core.errors import InvalidRequest, RequestTimeout, RequestTooLarge, TooBusy
from proxy.core.validate import parse_object
from proxy.http.appkeys import DECODED, METRICS

# the decoded bytes a request holds of the process's budget (given back by the middleware)
DECODED_HELD = web.RequestKey("decoded_held", int)


class DecodedBodies:
    """The decoded compressed bodies this process holds at once, in bytes: bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def give_back(self, request: web.Request) -> None:
        self.held -= request.get(DECODED_HELD, 0)


# zlib's window bits: 16 + 15 reads gzip, 15 the zlib format ("deflate" in HTTP)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_PIECE = 256 * 1024  # inflated at a time


async def read_body(request: web.Request, limit: int, timeout_s: float = 120.0) -> bytes:
    """The request's body, decoded, at most ``limit`` bytes (413 beyond, compressed or not),
    arrived within ``timeout_s`` (408 after)."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(
            f"request body is {request.content_length} bytes; the limit is {limit} bytes"
        )
    try:
        if request.content.is_eof():  # all here (a small body comes with its headers)
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestTooLarge(f"request body is over the limit of {limit} bytes") from exc
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from exc
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if not encoding or encoding == "identity":
        return raw
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InvalidRequest(
            f"Content-Encoding {encoding[:40]!r} is not supported: send gzip, deflate or none"
        )
    bodies = request.app[DECODED]
    try:
        body = inflate(raw, wbits, limit, bodies.limit - bodies.held)
    except TooBusy:
        request.app[METRICS].body_budget_refused.inc()
        raise
    bodies.held += len(body)
    request[DECODED_HELD] = len(body)
    return body


def inflate(raw: bytes, wbits: int, limit: int, room: int | None = None) -> bytes:
    """``raw`` decoded, piece by piece: never more than ``limit`` bytes held (413), nor more
    than ``room``, what the process may still hold of decoded bodies (a retryable 429)."""
    d = zlib.decompressobj(wbits)
    out: list[bytes] = []
    size = 0
    data = raw
    try:
        while True:
            piece = d.decompress(data, _PIECE)
            size += len(piece)
            if size > limit:
                raise RequestTooLarge(f"decoded request body is over the limit of {limit} bytes")
            if room is not None and size > room:
                raise TooBusy(
                    "this proxy is holding as many decoded request bodies as it may at once; "
                    "retry shortly, or send the body uncompressed",
                    headers={"retry-after": "1"},
                )
            out.append(piece)
            data = d.unconsumed_tail
            if not data and (d.eof or not piece):
                break
    except zlib.error as exc:
        raise InvalidRequest("request body is not valid for its Content-Encoding") from exc
    if not d.eof:
        raise InvalidRequest("request body ends before its Content-Encoding's end")
    return b"".join(out)


async def json_object(
    request: web.Request, *, allow_empty: bool = False, limit: int = 1024 * 1024
) -> dict[str, Any]:
    raw = await read_body(request, limit)
    if not raw and allow_empty:
        return {}
    return parse_object(raw)
