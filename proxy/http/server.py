"""The HTTP server around the app: aiohttp's, with its answer to a request it cannot parse
made safe.

aiohttp logs a malformed request line or header at error level with the offending bytes and
echoes them in its 400 (``Invalid header value char: b'x-api-key: sk-eup-…\\x00'``): a
credential with a NUL, DEL, bare CR or over 8,190 bytes would land in the log and in the
body. ``GuardedRequestHandler`` answers such a request with a 400 in the Anthropic envelope
that names only the kind of error, and logs one warning line without the bytes.
It also bounds how long a request's line and headers may take to arrive
(``server.header_timeout_s``): aiohttp waits for them forever on a new connection (a client
sending a byte a minute holds a connection and its buffer), and how many bytes they may take
(``ConnectionLimits``: per connection and in all; aiohttp holds up to 128 lines of 8,190 bytes
before any handler runs), and how many connections one client address and the process may
hold open at once. ``ProxyRunner`` is the ``AppRunner`` that serves with it (``serve`` and
the tests use it).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from proxy.config import ServerConfig
from proxy.http.appkeys import CONFIG, METRICS
from proxy.obs.logs import Throttled

log = logging.getLogger("proxy.http.server")
refusals = Throttled(log)


def _refusal(status: str, message: str) -> bytes:
    """A complete answer written straight to a connection that is closed after it."""
    body = orjson.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    )
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-should-retry: false\r\nconnection: close\r\n\r\n"
    ).encode() + body


def open_files_limit() -> int:
    """The process's soft limit on open files (connections are files)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass
class ConnectionLimits:
    """What the process's connections may hold: open connections per client address and in
    all, and the bytes of request heads being read, per connection and in all."""

    per_client: int = 256
    total: int = 4096
    head_bytes: int = 64 * 1024
    head_bytes_total: int = 32 * 1024 * 1024
    # the state: connections open by address, and head bytes being read now
    open: dict[str, int] = field(default_factory=dict)
    open_total: int = 0
    reading: int = 0
    # called with the reason of each refusal (a metric, set by the runner)
    refused: Callable[[str], object] = lambda reason: None

    @classmethod
    def of(cls, server: ServerConfig) -> ConnectionLimits:
        total = server.max_connections or max(64, open_files_limit() * 3 // 4)
        return cls(
            per_client=server.max_connections_per_client or max(64, total // 4),
            total=total,
            head_bytes=server.max_header_bytes,
            head_bytes_total=server.max_header_bytes_total,
        )

    def admit(self, address: str) -> str:
        """Count a new connection from ``address``; the reason it is refused, else ""."""
        if self.open_total >= self.total:
            return "total"
        if self.open.get(address, 0) >= self.per_client:
            return "per_client"
        self.open[address] = self.open.get(address, 0) + 1
        self.open_total += 1
        return ""

    def release(self, address: str) -> None:
        left = self.open.get(address, 0) - 1
        if left > 0:
            self.open[address] = left
        else:
            self.open.pop(address, None)
        self.open_total -= 1


def head_size(message: Any) -> int:
    """The bytes of a parsed request's line and headers (near enough: separators counted);
    0 for what the parser could not parse (aiohttp answers that itself)."""
    headers = getattr(message, "raw_headers", None)
    if headers is None:
        return 0
    return len(message.path) + sum(len(k) + len(v) + 4 for k, v in headers)


class GuardedRequestHandler(RequestHandler):
    header_timeout_s = 30.0  # set by the server that makes it
    limits = ConnectionLimits()  # the process's, set by the server that makes it
    _head_timer: asyncio.TimerHandle | None = None
    _address: str | None = None  # counted in the limits while the connection is open
    _head = 0  # bytes of the request head being read
    _body: Any = None  # the payload of the last request parsed, until its body is in
    # what to do if the member goes away now: set by a handler while it waits for the API
    # (``wait_for_api``), to cancel that wait, so that nothing is sent, or kept waiting, for
    # a member who is gone
    when_gone: Callable[[], object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        refused = self.limits.admit(address)
        if refused:
            self.limits.refused(refused)
            refusals.warning("connections", "connection refused: too many open", reason=refused)
            self._refuse(b"503 Service Unavailable", "too many connections open; retry shortly")
            return
        self._address = address
        self._arm()

    def _refuse(self, status: bytes, message: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_refusal(status.decode(), message))
            transport.close()

    def data_received(self, data: bytes) -> None:
        # bytes that come while no body is due belong to a request's head: bounded per
        # connection and in all, until the parser has the whole head
        body = self._body
        if body is not None and not body.is_eof():
            super().data_received(data)
            return
        limits = self.limits
        self._head += len(data)
        limits.reading += len(data)
        super().data_received(data)
        if self._messages:  # a head was parsed: what comes with it and after is its body
            message, self._body = self._messages[-1]
            over = self._head > limits.head_bytes  # else the head alone cannot be over
            self._done_reading()
            if not over or head_size(message) <= limits.head_bytes:
                return
            self._messages.clear()  # a whole head over the bound, come in one read: refused
            reason = "per_connection"
        elif self._head > limits.head_bytes or limits.reading > limits.head_bytes_total:
            reason = "per_connection" if self._head > limits.head_bytes else "total"
            self._done_reading()
        else:
            return
        limits.refused(f"head_{reason}")
        refusals.warning("connections", "request head too large", reason=reason)
        self._refuse(
            b"431 Request Header Fields Too Large",
            f"the request's headers are over {limits.head_bytes} bytes"
            if reason == "per_connection"
            else "too many request headers are being read at once; retry shortly",
        )

    def _done_reading(self) -> None:
        self.limits.reading -= self._head
        self._head = 0

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _head_too_slow(self) -> None:
        """The first request's head is not in yet: closed. (Armed once per connection, so
        that nothing runs per request; later requests on a kept-alive connection are bounded
        by the keep-alive timeout, which a partial head does not reset.)"""
        self._head_timer = None
        idle = self._request_count == 0 and self._current_request is None and not self._messages
        if idle and self.transport is not None:
            log.warning("request head too slow: connection closed", extra={"fields": {}})
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._done_reading()
        if self._address is not None:
            self.limits.release(self._address)
            self._address = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        when_gone = self.when_gone
        super().connection_lost(exc)
        if when_gone is not None:
            self.when_gone = None
            when_gone()  # the handler is waiting for the API on behalf of a member now gone

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "error"
        log.warning(
            "malformed request",
            extra={"fields": {"remote": request.remote, "status": status, "kind": kind}},
        )
        if request.writer.output_size > 0:  # a response has started: nothing more to send
            raise ConnectionError("response already started")
        text = (
            "the request could not be parsed (a header or the request line is malformed "
            "or too long)"
            if status == 400
            else "internal error in the proxy"
        )
        body = orjson.dumps(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error" if status < 500 else "api_error",
                    "message": text,
                },
            }
        )
        resp = web.Response(
            status=status,
            body=body,
            content_type="application/json",
            headers={"x-should-retry": "false"},
        )
        resp.force_close()
        return resp


def wait_for_api(request: web.Request, waiting: bool) -> None:
    """While ``waiting``, the member going away cancels the current task (its wait for the
    API); served by a plain aiohttp server (no ``ProxyRunner``), nothing happens."""
    proto = request.protocol
    if isinstance(proto, GuardedRequestHandler):
        task = asyncio.current_task() if waiting else None
        proto.when_gone = task.cancel if task is not None else None


class _GuardedServer(web.Server):
    header_timeout_s = 30.0
    limits = ConnectionLimits()

    def __call__(self) -> RequestHandler:
        # aiohttp's Server makes a RequestHandler with the same arguments
        handler = GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self.header_timeout_s
        handler.limits = self.limits
        return handler


class ProxyRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are handled by ``GuardedRequestHandler``."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float = 30.0,
        limits: ConnectionLimits | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        if limits is None:
            limits = (
                ConnectionLimits.of(app[CONFIG].server) if CONFIG in app else ConnectionLimits()
            )
        if METRICS in app:
            counter = app[METRICS].connections_refused
            limits.refused = lambda reason: counter.labels(reason).inc()
        self.limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # the same object, answering parse errors safely
        assert isinstance(server, _GuardedServer)
        server.header_timeout_s = self.header_timeout_s
        server.limits = self.limits
        return server
