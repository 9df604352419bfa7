"""The HTTP/1.1 client that carries members' requests to the Anthropic API.

Kept-alive connections per process, one request at a time on each; responses parsed by
httptools (llhttp, in C), bodies handed over as bytes as they arrive. It does what the
proxy needs and nothing else — no cookies, redirects, proxies from the environment or
per-request tracing — because aiohttp's general-purpose client spent about 125 µs of CPU
per request here against ~40 µs for the same exchange on a plain protocol
(``bench/upstream_client.py``), a third of a worker's time under load.

Semantics kept from aiohttp's client as the proxy used it: a connect timeout and a read
timeout on each silence (never a total, which would cut long streams); a response that
arrives gzip- or deflate-encoded is decoded (the proxy must read the usage in it; it asks
for no encoding, so the API sends none); a connection is reused only after a response read
to its end and not marked ``Connection: close``, and dropped after ``KEEPALIVE_S`` idle; a
request is never sent twice (a POST may have run). Failures raise ``UpstreamError``.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

KEEPALIVE_S = 15.0  # an idle connection older than this is closed, not reused
HIGH_WATER = 1 << 16  # unread response bytes at which the connection stops reading (as aiohttp)


class UpstreamError(Exception):
    """The API could not be reached, or its response broke off or made no sense."""


class UpstreamTimeout(UpstreamError):
    """Connecting, or a silence while waiting for the response, took too long."""


class Response:
    """One response: status and headers at once, the body as it arrives."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_exc",
        "_released",
        "_size",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: Connection, status: int, headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._exc: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._decoder: zlib._Decompress | None = None
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            # gzip framing, or zlib framing for deflate (what servers send under that name)
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else 0)
            del headers["content-encoding"]
            headers.popall("content-length", None)

    # -- fed by the connection -------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                self._conn.abort(UpstreamError(f"the API's response is not valid gzip: {exc}"))
                return
        if data:
            self._chunks.append(data)
            self._size += len(data)
            if self._size > HIGH_WATER:
                self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        if self._exc is not None:
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._done = True
        self._wake()

    def _fail(self, exc: Exception) -> None:
        if not self._done and self._exc is None:
            self._exc = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _take(self) -> bytes:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._conn.resume()
        return data

    # -- read by the proxy ---------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        while True:
            if self._chunks:
                parts.append(self._take())  # taken as it comes: reading never pauses
            if self._done:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._exc is not None:
                raise self._exc
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything received since the last chunk, at once."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._done:
                return
            elif self._exc is not None:
                raise self._exc
            else:
                await self._wait()

    @property
    def finished(self) -> bool:
        """The whole body is in (whatever the reader has not taken yet is all there is)."""
        return self._done

    def release(self) -> None:
        """Done with the response: its connection is kept for the next request if the body
        was read to its end, else closed. Idempotent."""
        if not self._released:
            self._released = True
            self._conn.done_with(self)

    def close(self) -> None:
        """Drop the connection (a stream nobody reads any more); then as released."""
        if not self._released:
            self._released = True
            self._conn.abort(UpstreamError("closed by the proxy"))


class Connection(asyncio.Protocol):
    """One kept-alive connection to the API, one exchange at a time."""

    def __init__(self, pool: Upstream) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.last = 0.0  # when a byte last came in
        self.current: Response | None = None
        self.reusable = False
        self._head: asyncio.Future[Response] | None = None
        self._headers: list[tuple[str, str]] = []
        self._interim = False
        self._framed = False  # the body's end is known from its framing, not the close
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._forgotten = False
        self._unsolicited = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.abort(UpstreamError(f"the API's response is not valid HTTP: {exc}"))
        if self._unsolicited:  # a response nobody asked for: the exchange is out of step
            self.abort(UpstreamError("the API sent a response to no request"))

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        aborted, self.closed = self.closed, True
        self._stop_timer()
        resp = self.current
        if resp is not None and not aborted and not self._framed and not resp._done:
            resp._finish()  # a body delimited by the connection's close: complete
        self._broken(UpstreamError("the connection to the API closed before the response"))
        self.pool.forget(self)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._interim = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the response follows
            self._interim = True
            return
        head, self._head = self._head, None
        if head is None:
            self._unsolicited = True
            return
        headers = CIMultiDict(self._headers)
        self._framed = (
            "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        )
        resp = self.current = Response(self, status, headers)
        if not head.done():
            head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        if self.current is not None and not self._unsolicited:
            self.current._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._stop_timer()
        self.reusable = self.parser.should_keep_alive()
        if self.current is not None and not self._unsolicited:
            self.current._finish()

    # -- one exchange ----------------------------------------------------------------------

    def send(self, head: bytes, body: bytes | None = None, *, complete: bool = True) -> None:
        """Start a request: its head, and its body when it is all here (``complete``);
        else the rest follows with ``write`` and then ``sent``."""
        if self.closed or self.transport is None:
            raise UpstreamError("the connection to the API closed")
        self._head = self.loop.create_future()
        self.current = None
        self.reusable = False
        self.last = self.loop.time()
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        if complete:
            self.sent()

    def write(self, data: bytes) -> None:
        """More of the request's body."""
        if self.closed or self.transport is None:
            raise UpstreamError("the connection to the API closed during the upload")
        self.transport.write(data)

    async def response(self) -> Response:
        """The response's status and headers (the body follows)."""
        head = self._head
        if head is None:
            if self.current is None:
                raise UpstreamError("no request was sent")
            return self.current
        try:
            return await head
        except asyncio.CancelledError:
            self.abort(UpstreamError("the request was cancelled"))
            raise

    def done_with(self, resp: Response) -> None:
        if self.current is not resp:
            return  # the connection moved on (or was aborted) already
        self.current = None
        if resp._done and self.reusable and not self.closed and not self._paused:
            self.pool.put_back(self)
        else:
            self.abort(UpstreamError("the response was not read to its end"))

    def abort(self, exc: Exception) -> None:
        """Close the connection; whoever waits on it gets ``exc``."""
        self._broken(exc)
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.abort()
        self.pool.forget(self)

    def close(self) -> None:
        """Close an idle connection (stale, or at shutdown)."""
        self.abort(UpstreamError("closed by the proxy"))

    def _broken(self, exc: Exception) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)
            # an upload cut before its response was asked for leaves no one awaiting this:
            # marked retrieved, so that asyncio logs no "exception was never retrieved"
            head.exception()
        if self.current is not None:
            self.current._fail(exc)

    # -- flow control and the read timeout ---------------------------------------------------

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.last = self.loop.time()
            self.transport.resume_reading()

    def sent(self) -> None:
        """The whole request is out: the read timeout counts from now."""
        self.last = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self.last + self.pool.read_timeout_s, self._check)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        """The read timeout: one timer per exchange, moved on lazily (a byte that arrives
        costs a clock read, not a timer)."""
        self._timer = None
        if self.closed:
            return
        due = self.last + self.pool.read_timeout_s
        if self._paused or self.loop.time() < due:  # the proxy's reader is the slow one
            self._timer = self.loop.call_at(max(due, self.loop.time() + 1e-3), self._check)
            return
        self.abort(
            UpstreamTimeout(f"the API sent nothing for {self.pool.read_timeout_s:g} seconds")
        )


class Upstream:
    """The connections of one process to the API at ``url`` (its path is a prefix)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 4096,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/prefix], got {url!r}")
        tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if tls else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.prefix = parts.path.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if tls else 80)
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.open = 0
        self._slots: deque[asyncio.Future[None]] = deque()
        self._closing = False

    def head(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], length: int | None
    ) -> bytes:
        """A request's head. ``target`` is the path and query as the member sent them."""
        parts = [f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers:
            parts.append(f"{name}: {value}\r\n")
        if length is not None:
            parts.append(f"Content-Length: {length}\r\n")
        parts.append("\r\n")
        text = "".join(parts)
        lines = len(parts) + 1  # the request line, Host, each header, the blank line
        if text.count("\n") != lines or text.count("\r") != lines:  # one inside a value
            raise UpstreamError("a request header holds a line break")
        return text.encode("utf-8", "surrogateescape")

    async def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> Response:
        """Send one request; its response once the status and headers are in."""
        head = self.head(method, target, headers, len(body) if body is not None else None)
        conn = await self.connect()
        conn.send(head, body)
        return await conn.response()

    async def connect(self) -> Connection:
        """A kept-alive connection, or a new one (waiting for one at the limit)."""
        while True:
            now = self.loop.time()
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed and now - conn.idle_since < self.keepalive_s:
                    return conn
                conn.close()
            if self._closing:
                raise UpstreamError("the proxy is shutting down")
            if self.open < self.max_connections:
                break
            slot = self.loop.create_future()
            self._slots.append(slot)
            try:
                await slot
            except asyncio.CancelledError:
                if slot.done() and not slot.cancelled():
                    self._wake_one()  # woken, but gone: the next in line takes the turn
                raise
        self.open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError as exc:
            self._free_slot()
            raise UpstreamTimeout(
                f"connecting to the API took over {self.connect_timeout_s:g} seconds"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            self._free_slot()
            raise UpstreamError(f"the API could not be reached: {exc}") from exc
        except BaseException:
            self._free_slot()
            raise
        return conn

    def put_back(self, conn: Connection) -> None:
        if self._closing:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        self._wake_one()

    def forget(self, conn: Connection) -> None:
        """A connection closed: its slot is free (once per connection)."""
        if not conn._forgotten:
            conn._forgotten = True
            self._free_slot()

    def _free_slot(self) -> None:
        self.open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slots:
            slot = self._slots.popleft()
            if not slot.done():
                slot.set_result(None)
                return

    async def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closing = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        while self._slots:  # whoever waits for a connection hears that there is none
            self._wake_one()
        await asyncio.sleep(0)
