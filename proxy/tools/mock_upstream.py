"""A mock of the Anthropic Messages API, for the demo, the tests and the benchmarks.

It answers like the real API: the same SSE event sequence (message_start with input and
cache usage, content blocks, ping, message_delta with cumulative usage, message_stop), the
same JSON shape and error envelope. Behaviour is set on the ``MockUpstream`` object, or per
request with ``x-mock-*`` headers (which the proxy forwards unchanged):

- ``x-mock-output-tokens``: output tokens to report (default: min(max_tokens, 50));
- ``x-mock-input-tokens``, ``x-mock-cache-write``, ``x-mock-cache-read``, ``x-mock-cache-1h``,
  ``x-mock-web-searches`` (server-side web searches it reports);
- ``x-mock-fault``: ``status-529`` (overloaded before any byte), ``status-500``,
  ``error-event`` (an ``event: error`` mid-stream), ``drop`` (connection cut halfway through
  a stream or a JSON body), ``no-delta`` (stream ends without message_delta);
- ``x-mock-events``: number of text deltas (default 10); ``x-mock-delay-ms``: pause per event
  (a JSON body is then sent in as many pieces); ``x-mock-first-byte-ms``: pause between the
  status line and the first byte of the body;
- ``x-mock-timestamps: 1``: each text delta carries ``sent_ns``, when it left the mock;
- ``x-mock-set-cookie``: a ``Set-Cookie`` value for the (non-streaming) response.

Each request's record says what the mock **served** (``served``: the usage fields it
reported, and the output tokens of the text it wrote before the answer ended or broke, ~4
characters a token) — what a conservation check compares the charges with.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MOCK: web.AppKey[MockUpstream] = web.AppKey("mock")


@dataclass
class MockUpstream:
    output_tokens: int | None = None
    input_tokens: int | None = None
    cache_write: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0
    web_searches: int = 0
    fault: str = ""
    events: int = 10
    delay_ms: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    record: bool = True

    def settings(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        h = request.headers
        max_tokens = int(body.get("max_tokens") or 1)
        out = int(h.get("x-mock-output-tokens", self.output_tokens or min(max_tokens, 50)))
        raw = len(orjson.dumps(body.get("messages", [])))
        return {
            "output": out,
            "input": int(h.get("x-mock-input-tokens", self.input_tokens or max(1, raw // 4))),
            "cache_write": int(h.get("x-mock-cache-write", self.cache_write)),
            "cache_1h": int(h.get("x-mock-cache-1h", self.cache_write_1h)),
            "cache_read": int(h.get("x-mock-cache-read", self.cache_read)),
            "fault": h.get("x-mock-fault", self.fault),
            "events": int(h.get("x-mock-events", self.events)),
            "delay": float(h.get("x-mock-delay-ms", self.delay_ms)) / 1000.0,
            "first_byte": float(h.get("x-mock-first-byte-ms", 0)) / 1000.0,
            "web_searches": int(h.get("x-mock-web-searches", self.web_searches)),
            "timestamps": h.get("x-mock-timestamps") == "1",
        }


def _usage(s: dict[str, Any], output: int) -> dict[str, Any]:
    five = s["cache_write"] - s["cache_1h"]
    usage: dict[str, Any] = {
        "input_tokens": s["input"],
        "cache_creation_input_tokens": s["cache_write"],
        "cache_read_input_tokens": s["cache_read"],
        "cache_creation": {
            "ephemeral_5m_input_tokens": five,
            "ephemeral_1h_input_tokens": s["cache_1h"],
        },
        "output_tokens": output,
        "service_tier": "standard",
    }
    if s["web_searches"]:
        usage["server_tool_use"] = {"web_search_requests": s["web_searches"]}
    return usage


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_mock_{secrets.token_hex(6)}",
        },
        status=status,
    )


def _served(
    record: dict[str, Any], s: dict[str, Any], text_chars: int, whole: bool, reported: int = 0
) -> None:
    """What the answer served so far: its input side once reported, and its output — the
    whole count once the answer is complete, else the text written (~4 characters a token)
    or the count it reported (message_start's 1), whichever is more."""
    usage = _usage(s, s["output"] if whole else max(reported, -(-text_chars // 4)))
    usage.pop("service_tier", None)
    record["served"] = usage


def _text(n_events: int, output: int) -> list[str]:
    # split ~4 characters a token over the deltas, so an estimate from text is near the truth
    total = output * 4
    n = max(1, n_events)
    base, extra = divmod(total, n)
    return ["x" * (base + (1 if i < extra else 0)) for i in range(n)]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def messages(request: web.Request) -> web.StreamResponse:
    mock = request.app[MOCK]
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(400, "invalid_request_error", "body is not JSON")
    record: dict[str, Any] = {
        "headers": dict(request.headers),
        "query": request.query_string,
        "body": body,
        "path": request.path,
        "completed": False,
    }
    if mock.record:
        mock.requests.append(record)
    if not request.headers.get("x-api-key"):
        return _error(401, "authentication_error", "x-api-key header is required")
    s = mock.settings(request, body)
    if s["fault"] == "status-529":
        return _error(529, "overloaded_error", "Overloaded")
    if s["fault"] == "status-500":
        return _error(500, "api_error", "Internal server error")
    model = body.get("model", "claude-sonnet-4-5")
    msg_id = f"msg_mock_{secrets.token_hex(8)}"
    chunks = _text(s["events"], s["output"])
    record["served"] = None
    if not body.get("stream"):
        doc = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "".join(chunks)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": _usage(s, s["output"]),
        }
        headers = {"request-id": f"req_mock_{secrets.token_hex(6)}"}
        if "x-mock-set-cookie" in request.headers:
            headers["set-cookie"] = request.headers["x-mock-set-cookie"]
        if not (s["delay"] or s["first_byte"] or s["fault"] == "drop"):
            _served(record, s, 0, True)
            record["completed"] = True
            return web.json_response(doc, headers=headers)
        try:
            return await _body_in_pieces(request, orjson.dumps(doc), headers, s, record)
        except (ConnectionResetError, asyncio.CancelledError):
            record["disconnected"] = True
            raise

    try:
        return await _stream(request, model, msg_id, chunks, s, record)
    except (ConnectionResetError, asyncio.CancelledError):
        record["disconnected"] = True  # the proxy cancelled the upstream request
        raise


async def _body_in_pieces(
    request: web.Request,
    body: bytes,
    headers: dict[str, str],
    s: dict[str, Any],
    record: dict[str, Any],
) -> web.StreamResponse:
    """A JSON answer sent slowly (``delay`` between pieces) or cut halfway (``drop``)."""
    resp = web.StreamResponse(headers={**headers, "content-type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    if s["first_byte"]:
        await asyncio.sleep(s["first_byte"])
    n = max(1, s["events"])
    size = -(-len(body) // n)
    text_at = body.find(b'"text":"') + len(b'"text":"')
    for i in range(n):
        if s["fault"] == "drop" and i == n // 2:
            assert request.transport is not None
            request.transport.close()
            return resp
        piece = body[i * size : (i + 1) * size]
        await resp.write(piece)
        sent = min(len(body), (i + 1) * size)
        _served(record, s, max(0, min(sent, text_at + s["output"] * 4) - text_at), False)
        if s["delay"] and i < n - 1:
            await asyncio.sleep(s["delay"])
    _served(record, s, 0, True)
    await resp.write_eof()
    record["completed"] = True
    return resp


async def _stream(
    request: web.Request,
    model: str,
    msg_id: str,
    chunks: list[str],
    s: dict[str, Any],
    record: dict[str, Any],
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "request-id": f"req_mock_{secrets.token_hex(6)}",
        }
    )
    await resp.prepare(request)
    if s["first_byte"]:
        await asyncio.sleep(s["first_byte"])
    start_usage = _usage(s, 1)
    await resp.write(
        _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
    )
    await resp.write(
        _sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    written = 0
    _served(record, s, written, False, start_usage["output_tokens"])
    await resp.write(_sse("ping", {"type": "ping"}))
    for i, text in enumerate(chunks):
        if s["delay"]:
            await asyncio.sleep(s["delay"])
        if i == len(chunks) // 2:
            if s["fault"] == "error-event":
                await resp.write(
                    _sse(
                        "error",
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        },
                    )
                )
                await resp.write_eof()
                return resp
            if s["fault"] == "drop":
                assert request.transport is not None
                request.transport.close()
                return resp
        await resp.write(
            _sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                    # when it left the mock: lets a benchmark time each chunk's forwarding
                    **({"sent_ns": time.time_ns()} if s["timestamps"] else {}),
                },
            )
        )
        written += len(text)
        _served(record, s, written, False, start_usage["output_tokens"])
    await resp.write(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    _served(record, s, 0, True)  # the whole text is out: all its output tokens
    if s["fault"] != "no-delta":
        final = _usage(s, s["output"])
        final.pop("service_tier", None)
        await resp.write(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": final,
                },
            )
        )
    await resp.write(_sse("message_stop", {"type": "message_stop"}))
    await resp.write_eof()
    record["completed"] = True
    return resp


async def count_tokens(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read() or b"{}")
    if not request.headers.get("x-api-key"):
        return _error(401, "authentication_error", "x-api-key header is required")
    return web.json_response(
        {"input_tokens": max(1, len(orjson.dumps(body.get("messages", []))) // 4)}
    )


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "data": [
                {
                    "type": "model",
                    "id": "claude-sonnet-4-5-20250929",
                    "display_name": "Claude Sonnet 4.5",
                    "created_at": "2025-09-29T00:00:00Z",
                },
                {
                    "type": "model",
                    "id": "claude-opus-4-5-20251101",
                    "display_name": "Claude Opus 4.5",
                    "created_at": "2025-11-01T00:00:00Z",
                },
            ],
            "has_more": False,
            "first_id": "claude-sonnet-4-5-20250929",
            "last_id": "claude-opus-4-5-20251101",
        }
    )


def build_mock_app(mock: MockUpstream | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[MOCK] = mock or MockUpstream()
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", models)
    return app
