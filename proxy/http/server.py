"""The HTTP server around the app: aiohttp's, with its answer to a request it cannot parse
made safe.

aiohttp logs a malformed request line or header at error level with the offending bytes and
echoes them in its 400 (``Invalid header value char: b'x-api-key: sk-eup-…\\x00'``): a
credential with a NUL, DEL, bare CR or over 8,190 bytes would land in the log and in the
body. ``GuardedRequestHandler`` answers such a request with a 400 in the Anthropic envelope
that names only the kind of error, and logs one warning line without the bytes.
It also bounds how long a request's line and headers may take to arrive
(``server.header_timeout_s``): aiohttp waits for them forever on a new connection (a client
sending a byte a minute holds a connection and its buffer). ``ProxyRunner`` is the
``AppRunner`` that serves with it (``serve`` and the tests use it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("proxy.http.server")


class GuardedRequestHandler(RequestHandler):
    header_timeout_s = 30.0  # set by the server that makes it
    _head_timer: asyncio.TimerHandle | None = None
    # what to do if the member goes away now: set by a handler while it waits for the API
    # (``wait_for_api``), to cancel that wait, so that nothing is sent, or kept waiting, for
    # a member who is gone
    when_gone: Callable[[], object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

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

    def __call__(self) -> RequestHandler:
        # aiohttp's Server makes a RequestHandler with the same arguments
        handler = GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self.header_timeout_s
        return handler


class ProxyRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are handled by ``GuardedRequestHandler``."""

    def __init__(
        self, app: web.Application, *, header_timeout_s: float = 30.0, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # the same object, answering parse errors safely
        assert isinstance(server, _GuardedServer)
        server.header_timeout_s = self.header_timeout_s
        return server
