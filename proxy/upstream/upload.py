"""A large request body sent upstream while it is still arriving, all but its last byte.

Store-and-forward makes a long context (Claude Code sends several MiB) cross the wire twice
in sequence: client to proxy, then proxy to the API. Here the upstream request starts as soon
as the body does, and every chunk but the last is forwarded as it arrives. A server acts on a
request only once its whole body (``Content-Length`` bytes) is in, so the API holds an
incomplete request while the proxy validates and admits it: allowed, the last byte goes out;
refused or invalid, the upload is cut off (the connection closed) and the API never had a
request it could run or bill. An upload that broke before its last chunk was handed to the
connection is sent again whole; once the last chunk may have gone, a failure is reported like
any upstream failure (502), never answered by a second request that the API might also run.

Used only for a key this process has admitted before (so its organization's upstream
credential is known, and an unknown caller never opens an upstream request) and a body with a
``Content-Length`` of at least ``STREAM_FROM`` bytes and no ``Content-Encoding``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.core.errors import InvalidRequest
from proxy.upstream.client import Response, Upstream, UpstreamError

STREAM_FROM = 256 * 1024  # below this, store-and-forward costs under a millisecond
MAX_KNOWN_KEYS = 100_000  # admitted key hashes remembered per process
_GO, _CUT = object(), object()


class UploadCut(UpstreamError):
    """The upload was abandoned before its last chunk."""


def streamable(request: web.Request, limit: int) -> int | None:
    """The body's length when it may be forwarded as it arrives, else None."""
    n = request.content_length
    if n is None or n < STREAM_FROM or n > limit or "content-encoding" in request.headers:
        return None
    return n


class Upload:
    """One request body on its way upstream, its last byte held back until ``release``."""

    def __init__(
        self, client: Upstream, target: str, headers: list[tuple[str, str]], length: int, ref: str
    ) -> None:
        self.length, self.ref = length, ref
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.complete = False  # the last chunk went to the connection: the API has the request
        self.decided = False
        # not chunked: the body goes as it came, under the client's length
        head = client.head("POST", target, headers, length)
        self.task = asyncio.ensure_future(self._send(client, head))

    async def _send(self, client: Upstream, head: bytes) -> Response:
        conn = await client.connect()
        try:
            conn.send(head, complete=False)
            held: bytes | None = None
            while True:
                item = await self.queue.get()
                if item is _CUT:
                    raise UploadCut("the request was not admitted")
                if item is _GO:
                    if held is not None:
                        conn.write(held)
                    self.complete = True
                    conn.sent()
                    return await conn.response()
                assert isinstance(item, bytes)
                if item:
                    # all but the body's last byte goes as it arrives: the API acts on a
                    # request only once it has every byte of it
                    if held is not None:
                        conn.write(held)
                    conn.write(item[:-1])
                    held = item[-1:]
        except BaseException as exc:
            if not self.complete:  # cut off: the API never had the whole request
                conn.abort(exc if isinstance(exc, UpstreamError) else UploadCut("cancelled"))
            raise

    async def read(self, request: web.Request) -> bytes:
        """The whole body, every chunk but the last forwarded as it arrives."""
        chunks: list[bytes] = []
        got = 0
        async for chunk in request.content.iter_any():
            got += len(chunk)
            chunks.append(chunk)
            self.queue.put_nowait(chunk)
        if got != self.length:
            raise InvalidRequest(f"request body ended after {got} of {self.length} bytes")
        return b"".join(chunks)

    async def release(self) -> Response | None:
        """Send the last byte; the upstream response, or None when the upload failed before
        the API had the whole request (it may then be sent again, whole)."""
        self.decided = True
        self.queue.put_nowait(_GO)
        try:
            return await self.task
        except UpstreamError:
            if self.complete:
                raise
            return None

    def cut(self) -> None:
        """Abandon the upload before its last chunk (idempotent)."""
        if self.decided:
            return
        self.decided = True
        self.queue.put_nowait(_CUT)
        self.task.add_done_callback(_discard)


def _discard(task: asyncio.Future[Response]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a cut upload ends in UploadCut, on purpose
