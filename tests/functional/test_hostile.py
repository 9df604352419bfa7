"""Hostile input, as a table of attacks against a real proxy (real aiohttp server, real
redis-server, the mock API): each attack asserts the status and the message, that nothing
changed (usage, balance, ledger, audit), that the worker still serves, and that no secret —
proxy key, admin token, operator, service or upstream token — is in anything the proxy
logged while it ran."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.conftest import OPERATOR, SERVICE, UPSTREAM_KEY, Proxy, message
from tests.servers import RedisServer


@dataclass
class Target:
    proxy: Proxy
    org: str
    key: str  # a member's proxy key
    owner_token: str  # the primary owner's admin token

    @property
    def secrets(self) -> list[str]:
        return [self.key, self.owner_token, OPERATOR, SERVICE, UPSTREAM_KEY]


async def raw(proxy: Proxy, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; (status, body) of the answer."""
    assert proxy.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request(target: str, *headers: bytes, method: bytes = b"GET", body: bytes = b"") -> bytes:
    lines = [method + b" " + target.encode() + b" HTTP/1.1", b"Host: proxy", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def snapshot(t: Target) -> dict[str, Any]:
    store = t.proxy.store
    k = store.keys(t.org)
    return {
        "org": await store.org_settings(t.org),
        "members": await store.members(t.org),
        "ledger": len(await store.ledger(t.org)),
        "audit": await store.client.xlen(k.audit),
        "ops": len(await store.operations(t.org)),
    }


@pytest.fixture
async def target(proxy: Proxy) -> Target:
    org = await proxy.org("team")
    key = await proxy.member(org, "mal")
    status, _ = await proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{org}/members/olga",
        json={"role": "primary_owner", "tier": "standard"},
    )
    assert status == 201
    status, tok = await proxy.admin("POST", f"/admin/v1/orgs/{org}/members/olga/admin-tokens")
    assert status == 201
    return Target(proxy, org, key, tok["token"])


Attack = Callable[[Target], Awaitable[tuple[int, bytes]]]
SERVICE_AUTH = {"authorization": f"Bearer {SERVICE}"}


def check_request(t: Target, request_id: str, member: str = "mal") -> dict[str, Any]:
    """A check API admission of a small request."""
    return {
        "org_id": t.org,
        "member_id": member,
        "model": "claude-sonnet-4-5",
        "input_tokens": 10,
        "max_tokens": 10,
        "request_id": request_id,
    }


async def header_with_nul(t: Target) -> tuple[int, bytes]:
    return await raw(t.proxy, request("/v1/models", b"x-api-key: " + t.key.encode() + b"\x00x"))


async def header_with_del(t: Target) -> tuple[int, bytes]:
    token = b"authorization: Bearer " + t.owner_token.encode() + b"\x7f"
    return await raw(t.proxy, request(f"/admin/v1/orgs/{t.org}", token))


async def header_with_bare_cr(t: Target) -> tuple[int, bytes]:
    op = b"authorization: Bearer " + OPERATOR.encode() + b"\rx"
    return await raw(t.proxy, request("/admin/v1/orgs", op))


async def header_too_long(t: Target) -> tuple[int, bytes]:
    return await raw(t.proxy, request("/v1/models", b"x-api-key: " + t.key.encode() * 200))


async def encoded_slashes(t: Target) -> tuple[int, bytes]:
    target = "/v1/models/..%2F..%2Fmessages%2Fbatches"
    return await raw(t.proxy, request(target, b"x-api-key: " + t.key.encode()))


async def dot_segments(t: Target) -> tuple[int, bytes]:
    target = "/v1/models/../messages/batches"
    return await raw(t.proxy, request(target, b"x-api-key: " + t.key.encode()))


async def fragment(t: Target) -> tuple[int, bytes]:
    body = orjson.dumps({"model": "claude-sonnet-4-5", "messages": []})
    target = "/v1/messages/count_tokens#/../../batches"
    key = b"x-api-key: " + t.key.encode()
    return await raw(t.proxy, request(target, key, method=b"POST", body=body))


async def absolute_form(t: Target) -> tuple[int, bytes]:
    target = "http://api.anthropic.com/v1/messages/batches"
    return await raw(t.proxy, request(target, b"x-api-key: " + t.key.encode()))


async def unknown_key(t: Target) -> tuple[int, bytes]:
    forged = t.key[:-8] + "00000000"
    status, headers, body = await t.proxy.post(forged, message())
    assert headers["x-should-retry"] == "false"
    return status, body


async def deep_json(t: Target) -> tuple[int, bytes]:
    nested = b"[" * 60_000 + b"]" * 60_000
    body = b'{"model":"claude-sonnet-4-5","max_tokens":5,"messages":' + nested + b"}"
    headers = {"x-api-key": t.key, "content-type": "application/json"}
    async with t.proxy.session.post(t.proxy.url + "/v1/messages", data=body, headers=headers) as r:
        return r.status, await r.read()


async def gzip_bomb(t: Target) -> tuple[int, bytes]:
    bomb = gzip.compress(b'{"model":"x","messages":"' + b"0" * (64 * 1024 * 1024))
    headers = {"x-api-key": t.key, "content-encoding": "gzip"}
    async with t.proxy.session.post(t.proxy.url + "/v1/messages", data=bomb, headers=headers) as r:
        return r.status, await r.read()


async def unknown_encoding(t: Target) -> tuple[int, bytes]:
    headers = {"x-api-key": t.key, "content-encoding": "br"}
    async with t.proxy.session.post(
        t.proxy.url + "/v1/messages", data=b"\x00\x01", headers=headers
    ) as r:
        return r.status, await r.read()


async def operator_token_as_upstream_credential(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin(
        "PATCH", f"/admin/v1/orgs/{t.org}", json={"upstream_credential": "OPERATOR_TOKEN"}
    )
    return status, orjson.dumps(body)


async def primary_owner_disables_themselves(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{t.org}/members/olga",
        token=t.owner_token,
        json={"role": "primary_owner", "tier": "standard", "enabled": False},
    )
    return status, orjson.dumps(body)


async def another_orgs_admin(t: Target) -> tuple[int, bytes]:
    other = await t.proxy.org("team")
    status, body = await t.proxy.admin("GET", f"/admin/v1/orgs/{other}", token=t.owner_token)
    return status, orjson.dumps(body)


async def headers_over_the_bound(t: Target) -> tuple[int, bytes]:
    """~1 MB of header lines (128 of 8,000 bytes): refused at 64 KiB, before any handler."""
    lines = [b"x-pad-%d: " % i + b"a" * 8000 for i in range(128)]
    return await raw(t.proxy, request("/v1/models", b"x-api-key: " + t.key.encode(), *lines))


async def member_id_ending_in_a_newline(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{t.org}/members/ann%0A",
        json={"role": "member", "tier": "standard"},
    )
    return status, orjson.dumps(body)


async def primary_owner_id_ending_in_a_newline(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin(
        "PUT",
        f"/admin/v1/orgs/{t.org}/members/pat%0A",
        json={"role": "primary_owner", "tier": "standard"},
    )
    return status, orjson.dumps(body)


async def org_id_ending_in_a_newline(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin("GET", f"/admin/v1/orgs/{t.org}%0A")
    return status, orjson.dumps(body)


async def model_with_a_nul(t: Target) -> tuple[int, bytes]:
    status, _, body = await t.proxy.post(t.key, message(model="claude-sonnet-4-5\x00x"))
    return status, body


async def model_with_a_nul_through_the_check_api(t: Target) -> tuple[int, bytes]:
    doc = {**check_request(t, "nul-1"), "model": "claude\x00"}
    async with t.proxy.session.post(
        t.proxy.url + "/v1/usage/check", json=doc, headers=SERVICE_AUTH
    ) as r:
        return r.status, await r.read()


async def amount_padded_with_nbsp(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin(
        "POST",
        f"/admin/v1/orgs/{t.org}/extra-usage/purchases",
        json={"amount": "\u00a010.00", "idempotency_key": "nbsp", "buy_ahead": True},
    )
    return status, orjson.dumps(body)


async def amount_ending_in_a_newline(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin(
        "PATCH", f"/admin/v1/orgs/{t.org}/extra-usage", json={"monthly_limit": "10.00\n"}
    )
    return status, orjson.dumps(body)


async def audit_cursor_forged(t: Target) -> tuple[int, bytes]:
    status, body = await t.proxy.admin("GET", f"/admin/v1/orgs/{t.org}/audit?cursor=-%2B")
    return status, orjson.dumps(body)


ATTACKS: list[tuple[Attack, int, str]] = [
    (header_with_nul, 400, "could not be parsed"),
    (header_with_del, 400, "could not be parsed"),
    (header_with_bare_cr, 400, "could not be parsed"),
    (header_too_long, 400, "could not be parsed"),
    (encoded_slashes, 400, "encoded slashes"),
    (dot_segments, 400, "'..' segments"),
    (fragment, 400, "fragments"),
    (absolute_form, 400, "single /"),
    (unknown_key, 401, "unknown or revoked key"),
    (deep_json, 400, "nested too deep"),
    (gzip_bomb, 413, "decoded request body is over the limit"),
    (unknown_encoding, 400, "Content-Encoding 'br' is not supported"),
    (operator_token_as_upstream_credential, 400, "must name a variable starting with"),
    (primary_owner_disables_themselves, 409, "primary owner cannot be disabled"),
    (another_orgs_admin, 404, "not found"),
    (headers_over_the_bound, 431, "headers are over 65536 bytes"),
    (member_id_ending_in_a_newline, 404, "not found"),
    (primary_owner_id_ending_in_a_newline, 404, "not found"),
    (org_id_ending_in_a_newline, 404, "not found"),
    (model_with_a_nul, 400, "model: must be a model id"),
    (model_with_a_nul_through_the_check_api, 400, "model: must be a model id"),
    (amount_padded_with_nbsp, 400, "must be a decimal amount"),
    (amount_ending_in_a_newline, 400, "must be a decimal amount"),
    (audit_cursor_forged, 400, "cursor: not a cursor"),
]


@pytest.mark.parametrize(
    ("attack", "status", "words"), ATTACKS, ids=lambda a: getattr(a, "__name__", "")
)
async def test_an_attack_is_refused_and_changes_nothing(
    target: Target,
    attack: Attack,
    status: int,
    words: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    before = await snapshot(target)
    calls = len(target.proxy.mock.requests)
    started = time.monotonic()
    got, body = await attack(target)
    assert (got, words in body.decode(errors="replace")) == (status, True), body[:300]
    assert time.monotonic() - started < 5  # answered, not stalled
    await target.proxy.settled()
    assert await snapshot(target) == before  # no usage, balance, ledger or audit moved
    assert len(target.proxy.mock.requests) == calls  # nothing reached the API
    # the worker still serves
    ok, _, _ = await target.proxy.post(target.key, message())
    assert ok == 200
    await target.proxy.settled()
    logged = capfd.readouterr()
    text = logged.out + logged.err + caplog.text
    for secret in target.secrets:
        assert secret not in text
        assert secret not in body.decode(errors="replace")


async def test_a_removed_member_added_again_has_no_old_credential(target: Target) -> None:
    p, org = target.proxy, target.org
    assert (await p.admin("DELETE", f"/admin/v1/orgs/{org}/members/mal"))[0] == 200
    status, _ = await p.admin(
        "PUT", f"/admin/v1/orgs/{org}/members/mal", json={"role": "owner", "tier": "standard"}
    )
    assert status == 200
    status, headers, body = await p.post(target.key, message())
    assert (status, headers["x-should-retry"]) == (401, "false"), body
    # and an admin token of a removed member too
    status, tok = await p.admin("POST", f"/admin/v1/orgs/{org}/members/mal/admin-tokens")
    assert status == 201
    assert (await p.admin("GET", f"/admin/v1/orgs/{org}", token=tok["token"]))[0] == 200
    assert (await p.admin("DELETE", f"/admin/v1/orgs/{org}/members/mal"))[0] == 200
    await p.admin(
        "PUT", f"/admin/v1/orgs/{org}/members/mal", json={"role": "owner", "tier": "standard"}
    )
    assert (await p.admin("GET", f"/admin/v1/orgs/{org}", token=tok["token"]))[0] == 401
    # a new key for the member added again works
    status, new = await p.admin("POST", f"/admin/v1/orgs/{org}/members/mal/keys")
    assert (await p.post(new["key"], message()))[0] == 200


async def test_head_on_a_forwarded_route_answers_at_once(target: Target) -> None:
    started = time.monotonic()
    async with target.proxy.session.head(
        target.proxy.url + "/v1/models", headers={"x-api-key": target.key}
    ) as r:
        assert r.status == 200
        assert await r.read() == b""
    assert time.monotonic() - started < 2


async def test_a_compressed_body_goes_upstream_decoded(target: Target) -> None:
    body = orjson.dumps(message())
    headers = {"x-api-key": target.key, "content-encoding": "gzip"}
    async with target.proxy.session.post(
        target.proxy.url + "/v1/messages", data=gzip.compress(body), headers=headers
    ) as r:
        assert r.status == 200, await r.read()
    seen = target.proxy.mock.requests[-1]
    assert seen["body"] == orjson.loads(body)
    assert "content-encoding" not in {h.lower() for h in seen["headers"]}


async def test_headers_named_by_connection_are_not_forwarded(target: Target) -> None:
    status, _, _ = await target.proxy.post(
        target.key, message(), headers={"connection": "keep-alive, x-hop", "x-hop": "secret"}
    )
    assert status == 200
    assert "x-hop" not in {h.lower() for h in target.proxy.mock.requests[-1]["headers"]}


async def test_the_check_api_answers_every_may_not_alike(target: Target) -> None:
    p = target.proxy
    auth = SERVICE_AUTH
    body = check_request(target, "hostile-1")
    await p.admin("PATCH", f"/admin/v1/orgs/{target.org}", json={"enabled": False})
    async with p.session.post(p.url + "/v1/usage/check", json=body, headers=auth) as r:
        assert r.status == 200
        doc = await r.json()
    assert (doc["decision"], doc["reason"]) == ("deny", "org_disabled")


async def test_pages_forbid_framing_and_foreign_scripts(proxy: Proxy) -> None:
    async with proxy.session.get(proxy.url + "/admin") as r:
        assert r.status == 200
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    async with proxy.session.get(proxy.url + "/admin/static/admin.js") as r:
        assert r.headers["x-content-type-options"] == "nosniff"


async def test_every_refusal_writes_its_access_line_and_counts(
    target: Target, capfd: pytest.CaptureFixture[str]
) -> None:
    p = target.proxy
    capfd.readouterr()
    await p.post(target.key[:-8] + "00000000", message())  # 401
    async with p.session.post(
        p.url + "/v1/messages", data=b"{", headers={"x-api-key": target.key}
    ) as r:
        assert r.status == 400
    await p.settled()
    await asyncio.sleep(0.1)  # the access log writes its lines every 50 ms
    lines = [orjson.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    statuses = [x["status"] for x in lines if x.get("msg") == "request"]
    assert 401 in statuses and 400 in statuses
    async with p.session.get(p.url + "/metrics") as r:
        text = await r.text()
    assert 'eup_requests_total{outcome="401",route="messages"}' in text
    assert 'eup_requests_total{outcome="400",route="messages"}' in text


async def test_one_org_cannot_hold_the_connections_others_need(proxy_factory: Any) -> None:
    """max_connections 4: each org may have 2 requests in flight; the third of one org is a
    retryable 429 while another org is still served."""
    p = await proxy_factory(upstream={"max_connections": 4})
    greedy, other = await p.org("team"), await p.org("team")
    gkey, okey = await p.member(greedy, "gus"), await p.member(other, "ola")
    slow = {"x-mock-delay-ms": "300", "x-mock-events": "3"}
    held = [asyncio.create_task(p.post(gkey, message(stream=True), headers=slow)) for _ in range(2)]
    await asyncio.sleep(0.15)  # both are streaming now
    status, headers, body = await p.post(gkey, message())
    assert status == 429 and b"requests in flight" in body
    assert headers["retry-after"] == "1" and "x-should-retry" not in headers
    assert (await p.post(okey, message()))[0] == 200  # the other org is served meanwhile
    assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]
    assert (await p.post(gkey, message()))[0] == 200  # and the slots come back


async def test_a_slow_request_head_is_cut_off(proxy_factory: Any) -> None:
    p = await proxy_factory(server={"header_timeout_s": 0.3})
    assert p.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", p.server.port)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    await writer.drain()
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
    assert time.monotonic() - started < 2
    writer.close()


async def test_a_body_that_does_not_come_is_a_408(proxy_factory: Any) -> None:
    p = await proxy_factory(server={"body_timeout_s": 0.3})
    org = await p.org("team")
    key = await p.member(org, "sid")
    assert (await p.post(key, message()))[0] == 200
    before = len(p.mock.requests)
    status, body = await raw(
        p,
        request(
            "/v1/messages", b"x-api-key: " + key.encode(), b"Content-Length: 1000", method=b"POST"
        ),
    )
    assert status == 408 and b"did not arrive within" in body
    assert len(p.mock.requests) == before


@pytest.mark.parametrize("fault", ["hung", "down"])
async def test_redis_hung_or_down_is_a_fast_final_503(proxy_factory: Any, fault: str) -> None:
    """fail_closed: a Redis that answers nothing (SIGSTOP) or is gone gives a 503 within
    redis.timeout_s, with x-should-retry: false (Claude Code then stops at once: see
    bench/claude_code.py)."""
    redis = RedisServer().start()
    try:
        p = await proxy_factory(redis={"url": redis.url, "timeout_s": 1})
        org = await p.org("team")
        key = await p.member(org, "hal")
        unseen = await p.member(org, "hub")  # never admitted here: checked before its body
        assert (await p.post(key, message()))[0] == 200
        assert redis.proc is not None
        if fault == "hung":
            os.kill(redis.proc.pid, signal.SIGSTOP)
        else:
            redis.kill()
        started = time.monotonic()
        status, headers, body = await p.post(key, message())
        elapsed = time.monotonic() - started
        assert (status, headers["x-should-retry"]) == (503, "false"), body
        assert b"fails closed" in body and b"127.0.0.1" not in body
        assert elapsed < 1.6
        started = time.monotonic()
        status, headers, body = await p.post(unseen, message())
        assert (status, headers["x-should-retry"], b"fails closed" in body) == (503, "false", True)
        assert time.monotonic() - started < 1.6
    finally:
        if redis.proc is not None:
            os.kill(redis.proc.pid, signal.SIGCONT)
        redis.cleanup()


async def test_a_request_whose_member_left_is_never_sent(proxy_factory: Any) -> None:
    """One upstream connection, held by another org's slow stream: a request waiting for it
    whose member goes away is dropped — the API never sees it, its reservation is released,
    nothing is charged."""
    p = await proxy_factory(upstream={"max_connections": 1})
    busy, left = await p.org("team"), await p.org("team")
    bkey, lkey = await p.member(busy, "bea"), await p.member(left, "leo")
    assert (await p.post(lkey, message()))[0] == 200  # leo's key is known: no whois later
    await p.settled()
    before_ledger = len(await p.store.ledger(left))
    slow = {"x-mock-delay-ms": "200", "x-mock-events": "4"}
    holder = asyncio.create_task(p.post(bkey, message(stream=True), headers=slow))
    await asyncio.sleep(0.1)
    sent = len(p.mock.requests)
    body = orjson.dumps(message(text="never sent"))
    assert p.server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", p.server.port)
    writer.write(request("/v1/messages", b"x-api-key: " + lkey.encode(), method=b"POST", body=body))
    await writer.drain()
    await asyncio.sleep(0.2)  # admitted, waiting for the one connection
    writer.close()  # the member goes away
    assert (await holder)[0] == 200
    await asyncio.sleep(0.3)
    await p.settled()
    texts = [orjson.dumps(r["body"]) for r in p.mock.requests[sent:]]
    assert not any(b"never sent" in t for t in texts)  # the API never had it
    assert len(await p.store.ledger(left)) == before_ledger  # nothing charged
    fields = await p.store.member_fields(left, "leo", ["eu_res"])
    assert int(fields.get("eu_res", "0")) == 0
    async with p.session.get(p.url + "/metrics") as r:
        assert 'eup_upstream_errors_total{kind="member_gone"} 1.0' in await r.text()


async def test_a_client_that_goes_away_leaves_no_error_in_the_log(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    """Members leave mid-stream, mid-body and before the answer: counted and settled, never
    a traceback at error level."""
    caplog.set_level(logging.DEBUG)
    p = target.proxy
    assert p.server.port is not None
    body = orjson.dumps(message(stream=True))
    slow = b"x-mock-delay-ms: 50\r\nx-mock-events: 20"
    for cut in (len(body) // 2, len(body)):  # mid-body, then after the whole request
        _, writer = await asyncio.open_connection("127.0.0.1", p.server.port)
        head = request("/v1/messages", b"x-api-key: " + target.key.encode(), slow, method=b"POST")
        writer.write(head[:-4] + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:cut])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()  # a reset, not a polite close
    await asyncio.sleep(0.3)
    await p.settled()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [
        (r.getMessage(), r.exc_text or (r.exc_info and repr(r.exc_info[1]))) for r in errors
    ]
    assert (await p.post(target.key, message()))[0] == 200


async def test_a_settlement_that_would_break_exact_money_is_refused(target: Target) -> None:
    p = target.proxy
    auth = SERVICE_AUTH
    check = check_request(target, "huge-1")
    async with p.session.post(p.url + "/v1/usage/check", json=check, headers=auth) as r:
        rsv = (await r.json())["reservation_id"]
    before = await snapshot(target)
    usage = {"input_tokens": 9007199254740993, "output_tokens": 1}
    async with p.session.post(
        p.url + "/v1/usage/settle", json={"reservation_id": rsv, "usage": usage}, headers=auth
    ) as r:
        assert r.status == 400
        assert "usage.input_tokens must be at most" in (await r.json())["error"]["message"]
    assert await snapshot(target) == before  # nothing charged, the reservation still held


async def test_a_request_id_belongs_to_its_member(target: Target) -> None:
    p = target.proxy
    await p.member(target.org, "nia")
    auth = SERVICE_AUTH
    check = check_request(target, "shared-1")
    async with p.session.post(p.url + "/v1/usage/check", json=check, headers=auth) as r:
        assert r.status == 200
    before = await snapshot(target)
    async with p.session.post(
        p.url + "/v1/usage/check", json={**check, "member_id": "nia"}, headers=auth
    ) as r:
        assert r.status == 409
        assert "another member's request" in (await r.json())["error"]["message"]
    assert await snapshot(target) == before  # charges no one, reserves nothing
