"""Hostile input, the bounded costs: what an attacker may make one process hold — request
heads, connections, decoded bodies, the org's upstream slots, a stream nobody reads, the
audit log — and what it may get through when Redis is down. Each against a real proxy (real
aiohttp server, real redis-server, the mock API), asserting the bound, that the worker still
serves and that nothing changed or leaked."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import time
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from proxy.core.credentials import PROXY_KEY_PREFIX, new_secret
from proxy.core.statements import TOKEN_COLUMNS, csv_cell, statement_csv
from proxy.http.app import build_app, metrics_app
from proxy.http.appkeys import DECODED, METRICS
from proxy.obs.logs import JSONFormatter, json_line
from tests.conftest import OPERATOR, Proxy, make_config, message
from tests.functional.test_hostile import raw, request
from tests.servers import RedisServer


def metric(p: Proxy, name: str, **labels: str) -> float:
    value = p.server.app[METRICS].registry.get_sample_value(name, labels or None)
    return value or 0.0


async def open_socket(p: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert p.server.port is not None
    return await asyncio.open_connection("127.0.0.1", p.server.port)


async def test_request_heads_are_bounded_in_all(proxy_factory: Any) -> None:
    """Three connections each sending 40 KB of header lines and never the end: the third
    passes the process's 100 KB and is answered 431 and closed; the heads' bytes are let go
    when their connections close, and the worker serves."""
    p = await proxy_factory(server={"max_header_bytes_total": 100_000})
    org = await p.org("team")
    key = await p.member(org, "hal")
    pad = b"".join(b"x-pad-%d: %s\r\n" % (i, b"a" * 3990) for i in range(10))  # ~40 KB
    held = []
    for _ in range(2):
        reader, writer = await open_socket(p)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + pad)
        await writer.drain()
        held.append((reader, writer))
    await asyncio.sleep(0.1)
    reader, writer = await open_socket(p)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + pad)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 431") and b"at once" in answer, answer[:200]
    assert metric(p, "eup_connections_refused_total", reason="head_total") == 1
    for _, w in held:
        w.close()
    writer.close()
    await asyncio.sleep(0.2)
    assert p.server.runner.limits.reading == 0  # type: ignore[union-attr]
    assert (await p.post(key, message()))[0] == 200


async def test_a_whole_head_over_the_bound_in_one_read_is_refused(proxy: Proxy) -> None:
    """100 KB of headers that arrive at once, complete: refused (431) all the same, and
    nothing reaches the API."""
    org = await proxy.org("team")
    key = await proxy.member(org, "hob")
    calls = len(proxy.mock.requests)
    pad = [b"x-pad-%d: %s" % (i, b"a" * 990) for i in range(100)]
    status, body = await raw(proxy, request("/v1/models", b"x-api-key: " + key.encode(), *pad))
    assert status == 431 and b"over 65536 bytes" in body
    assert len(proxy.mock.requests) == calls
    assert metric(proxy, "eup_connections_refused_total", reason="head_per_connection") >= 1


async def test_connections_are_capped_per_client_address(proxy_factory: Any) -> None:
    """Five open connections from one address: the sixth is answered 503 and closed, and
    counted; once one closes, a new one is served."""
    p = await proxy_factory(server={"max_connections_per_client": 5})
    org = await p.org("team")
    key = await p.member(org, "cal")
    # the test's own session may hold kept-alive connections: closed first
    await p.session.close()
    held = [await open_socket(p) for _ in range(5)]
    reader, writer = await open_socket(p)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer
    assert metric(p, "eup_connections_refused_total", reason="per_client") == 1
    writer.close()
    held[0][1].close()
    await asyncio.sleep(0.2)
    status, body = await raw(
        p, request("/v1/usage/me", b"x-api-key: " + key.encode(), b"Connection: close")
    )
    assert status == 200, body
    for _, w in held[1:]:
        w.close()


async def test_an_unauthenticated_probe_does_not_keep_its_connection(proxy: Proxy) -> None:
    """HEAD / (or a request with no valid key) is answered and its connection closed, so
    that probes cannot hold connections open past the idle timeout; a member's request keeps
    its connection alive."""
    reader, writer = await open_socket(proxy)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)  # the proxy closes: read() ends
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
    writer.close()
    reader, writer = await open_socket(proxy)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: sk-eup-nope-xxxx\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 401")
    writer.close()
    org = await proxy.org("team")
    key = await proxy.member(org, "kim")
    reader, writer = await open_socket(proxy)
    writer.write(
        b"GET /v1/usage/me HTTP/1.1\r\nHost: x\r\nx-api-key: " + key.encode() + b"\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
    writer.close()


async def test_a_slow_body_holds_none_of_the_orgs_slots(proxy_factory: Any) -> None:
    """One upstream slot per org: a member sending a body a byte at a time holds no slot, so
    a colleague is served meanwhile."""
    p = await proxy_factory(upstream={"max_connections_per_org": 1})
    org = await p.org("team")
    slow_key = await p.member(org, "sly")
    key = await p.member(org, "joy")
    assert (await p.post(slow_key, message()))[0] == 200
    body = orjson.dumps(message())
    reader, writer = await open_socket(p)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"x-api-key: " + slow_key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    writer.write(body[:5])
    await writer.drain()
    await asyncio.sleep(0.2)
    assert (await p.post(key, message()))[0] == 200  # the colleague is not refused
    writer.write(body[5:])
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_stream_nobody_reads_is_cut_and_its_slot_given_back(proxy_factory: Any) -> None:
    """A member who stops reading a long stream: the write waits at most write_timeout_s,
    then the stream is cut as if the member left (the upstream request closed, what was
    metered charged once), and the org's slot serves a colleague."""
    p = await proxy_factory(
        server={"write_timeout_s": 0.5}, upstream={"max_connections_per_org": 1}
    )
    org = await p.org("team")
    key = await p.member(org, "nor")
    other = await p.member(org, "ola")
    body = orjson.dumps(message(stream=True, max_tokens=100))
    assert p.server.port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", p.server.port))
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"x-api-key: " + key.encode() + b"\r\nx-mock-output-tokens: 4000000\r\n"
        b"x-mock-events: 40\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    await asyncio.get_running_loop().sock_sendall(sock, head + body)
    started = time.monotonic()
    for _ in range(100):  # never read: the proxy's writes back up, then time out
        await asyncio.sleep(0.1)
        if metric(p, "eup_write_timeouts_total"):
            break
    assert metric(p, "eup_write_timeouts_total") == 1
    assert time.monotonic() - started < 8
    sock.close()
    await p.settled()
    assert p.mock.requests[-1].get("disconnected")  # the upstream request was closed
    rows = [r for r in await p.store.ledger(org) if r["member"] == "nor"]
    assert len(rows) == 1 and rows[0].get("estimated") == "1"  # charged once, on what came
    assert int(rows[0]["cost"]) > 0
    assert (await p.post(other, message()))[0] == 200  # the slot came back


async def test_decoded_bodies_are_bounded_in_all(proxy_factory: Any) -> None:
    """Compressed bodies that decode to 2 MB each, with room for 3 MB decoded in all: while
    one is in flight a second is a retryable 429 (counted), and once it is done the room is
    back and nothing is held."""
    p = await proxy_factory(server={"max_decoded_bytes_in_flight": 3_000_000})
    org = await p.org("team")
    key = await p.member(org, "zip")
    doc = message(text="a" * 2_000_000)
    packed = gzip.compress(orjson.dumps(doc))
    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "content-encoding": "gzip",
        "content-type": "application/json",
    }

    async def send(extra: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        async with p.session.post(
            p.url + "/v1/messages", data=packed, headers={**headers, **extra}
        ) as r:
            return r.status, await r.read(), {k.lower(): v for k, v in r.headers.items()}

    first = asyncio.create_task(send({"x-mock-first-byte-ms": "600"}))
    await asyncio.sleep(0.3)
    assert p.server.app[DECODED].held > 2_000_000  # the first one's decoded body
    status, body, h = await send({})
    assert status == 429 and b"decoded request bodies" in body, body
    assert h["retry-after"] == "1" and "x-should-retry" not in h
    assert metric(p, "eup_decoded_bodies_refused_total") == 1
    assert (await first)[0] == 200
    assert p.server.app[DECODED].held == 0
    assert (await send({}))[0] == 200
    assert p.server.app[DECODED].held == 0


async def test_the_audit_log_keeps_changes_only_and_pages_with_a_cursor(proxy: Proxy) -> None:
    """A member setting their consent to what it is writes nothing; every change is in the
    log, and paging with next_cursor reads each entry exactly once."""
    org = await proxy.org("enterprise")
    key = await proxy.member(org, "ava")
    xlen = proxy.store.client.xlen
    audit_key = proxy.store.keys(org).audit

    async def consent(accept: bool) -> None:
        status, _, body = await proxy.post(key, {"accept": accept}, path="/v1/usage/me/extra-usage")
        assert status == 200, body

    await consent(False)  # from none to "not accepted": a change, logged
    before = await xlen(audit_key)
    for _ in range(20):
        await consent(False)  # already not accepted: no change, no entry
    assert await xlen(audit_key) == before
    for accept in (True, False, True):
        await consent(accept)
    assert await xlen(audit_key) == before + 3
    seen: list[str] = []
    cursor = None
    while True:
        path = f"/admin/v1/orgs/{org}/audit?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await proxy.admin("GET", path)
        assert status == 200, page
        seen += [e["id"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == before + 3
    assert seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)


def test_statement_csv_cells_cannot_be_formulas_or_rows() -> None:
    line = {
        "member_id": "@SUM(A1)",
        "tier": "standard",
        "mode": "extra_usage",
        "requests": 1,
        "cost": "1.00",
        **dict.fromkeys(TOKEN_COLUMNS, 0),
    }
    doc = {
        "period": "2026-12",
        "lines": [
            {**line, "model": '=HYPERLINK("http://evil","x")'},
            {**line, "model": "+cmd|' /C calc'!A0"},
            {**line, "model": "a\rb"},
        ],
        "totals": {"requests": 3, "included_usage": "0.00", "extra_usage": "3.00"},
    }
    text = statement_csv(doc)
    rows = text.split("\n")
    assert len(rows) == 1 + 3 + 2 + 1  # the header, the lines, the totals, the final newline
    for row in rows[1:4]:
        cells = row.split(",")
        assert cells[1] == "'@SUM(A1)"
    assert "'=HYPERLINK" in rows[1] and "'+cmd" in rows[2] and "a b" in rows[3]
    assert csv_cell("-1.50") == "-1.50"  # numbers stay numbers


def test_log_lines_escape_every_line_separator() -> None:
    assert json_line({"v": "a\u2028b\u2029c\nd"}) == b'{"v":"a\\u2028b\\u2029c\\nd"}'
    record = logging.LogRecord("t", logging.INFO, "", 0, "x\u2028y", None, None)
    assert "\u2028" not in JSONFormatter().format(record)


async def test_a_second_connection_header_names_headers_too(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "cid")
    body = orjson.dumps(message())
    status, _ = await raw(
        proxy,
        request(
            "/v1/messages",
            b"x-api-key: " + key.encode(),
            b"Content-Type: application/json",
            b"Connection: keep-alive",
            b"Connection: x-secret-hop",
            b"x-secret-hop: 1",
            method=b"POST",
            body=body,
        ),
    )
    assert status == 200
    assert "x-secret-hop" not in {h.lower() for h in proxy.mock.requests[-1]["headers"]}


async def test_an_answer_with_a_secret_is_never_cached(proxy: Proxy) -> None:
    org = await proxy.org("team")
    await proxy.admin(
        "PUT", f"/admin/v1/orgs/{org}/members/sam", json={"role": "member", "tier": "standard"}
    )
    for path in ("keys", "admin-tokens"):
        async with proxy.session.post(
            f"{proxy.url}/admin/v1/orgs/{org}/members/sam/{path}",
            headers={"authorization": f"Bearer {OPERATOR}"},
        ) as r:
            assert r.status == 201 and r.headers["cache-control"] == "no-store"


async def test_metrics_on_a_port_of_their_own(
    redis_server: RedisServer, aiohttp_server: Any
) -> None:
    """With server.metrics_port, /metrics is not on the members' port, and its own app
    serves it."""
    config = make_config(redis_server.url, "http://127.0.0.1:9", server={"metrics_port": 9999})
    app = build_app(config)
    main: TestServer = await aiohttp_server(app)
    metrics: TestServer = await aiohttp_server(metrics_app(app))
    async with aiohttp.ClientSession() as s:
        async with s.get(main.make_url("/metrics")) as r:
            assert r.status == 404
        async with s.get(metrics.make_url("/metrics")) as r:
            assert r.status == 200 and "eup_requests_total" in await r.text()


async def test_fail_open_lets_through_only_keys_it_knows(proxy_factory: Any) -> None:
    """Redis down under fail_open: a key this process checked before goes through (its usage
    journaled); a made-up key of an org that does not exist is a 503, and nothing reaches the
    API on its behalf."""
    server = RedisServer().start()
    try:
        p = await proxy_factory(redis={"url": server.url}, policy={"fail_mode": "open"})
        org = await p.org("team")
        key = await p.member(org, "fay")
        assert (await p.post(key, message()))[0] == 200  # checked while Redis is up
        server.cleanup()  # Redis gone
        made_up = new_secret(PROXY_KEY_PREFIX, "nosuchorg")
        calls = len(p.mock.requests)
        status, headers, body = await p.post(made_up, message())
        assert (status, headers["x-should-retry"]) == (503, "false"), body
        assert b"checked recently" in body
        assert len(p.mock.requests) == calls  # nothing reached the API for it
        assert metric(p, "eup_fail_open_refused_total") == 1
        assert (await p.post(key, message()))[0] == 200  # the known key goes on
    finally:
        server.cleanup()
