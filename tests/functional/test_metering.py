from __future__ import annotations

import asyncio
import calendar
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from proxy.core.admission import FULL_FIELDS
from proxy.core.decision import unified_headers
from proxy.storage.keys import op_key
from proxy.storage.model import Op
from proxy.storage.store import Store, StoreRefusal, script_source
from tests.conftest import SERVICE, Proxy, message
from tests.functional.helpers import expected_cost, ledger_sum, member_counters
from tests.functional.test_extra_usage import exhaust_seat


async def test_streamed_costs_exactly_what_non_streamed_costs(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "ann")
    extra = {
        "x-mock-cache-write": "300",
        "x-mock-cache-1h": "100",
        "x-mock-cache-read": "700",
        "x-mock-output-tokens": "321",
        "x-mock-input-tokens": "1234",
    }
    s1, _, _ = await proxy.post(key, message(max_tokens=500), headers=extra)
    s2, _, _ = await proxy.post(key, message(max_tokens=500, stream=True), headers=extra)
    assert (s1, s2) == (200, 200)
    rows = await proxy.store.ledger(org)
    assert len(rows) == 2
    assert rows[0]["cost"] == rows[1]["cost"]
    expected = 1234 * 3000 + 321 * 15000 + 200 * 3750 + 100 * 6000 + 700 * 300
    assert int(rows[0]["cost"]) == expected
    usage = orjson.loads(rows[1]["usage"])
    assert usage["cache_write_1h_tokens"] == 100


async def test_a_replayed_settlement_charges_once(proxy: Proxy) -> None:
    org = await proxy.org("team")
    await proxy.member(org, "bea")
    store = proxy.store
    a = await store.admit(
        org, "req-replay-1", who="m", credential="bea", max_cost=10**6, est_cost=10**6
    )
    assert a.allowed
    # a replayed admission returns the stored decision and reserves nothing more
    replay = await store.admit(
        org, "req-replay-1", who="m", credential="bea", max_cost=1, est_cost=1
    )
    assert replay["replay"] == "1"
    assert {k: v for k, v in replay.raw.items() if k != "replay"} == a.raw  # as answered
    first = await store.settle(org, "req-replay-1", cost=777, model="m", usage={})[0]
    again = await store.settle(org, "req-replay-1", cost=777, model="m", usage={})[0]
    assert again["replay"] == "1"
    assert first["entry"] == again["entry"]
    assert len(await store.ledger(org)) == 1
    assert (await member_counters(store, org, "bea"))["s_used"] == 777
    # once settled, the id is spent: admitting it again is refused, and the record is small
    with pytest.raises(StoreRefusal, match="duplicate_id"):
        await store.admit(org, "req-replay-1", who="m", credential="bea", max_cost=1, est_cost=1)
    k = store.keys(org)
    raw = await store.client.get(op_key(k, "req-replay-1"))
    assert len(raw) < 120
    record = await store.operation(org, "req-replay-1")
    assert record == {"s": Op.SETTLED, **{f: first[f] for f in Op.SETTLED_FIELDS}}
    # the record expires whole after the replay window
    assert 0 < await store.client.ttl(op_key(k, "req-replay-1")) <= store.policy.replay_window_s


async def test_the_proxys_lean_answer_carries_what_its_headers_need(proxy: Proxy) -> None:
    org = await proxy.org("enterprise")
    await proxy.member(org, "lea")
    store = proxy.store
    store.pinned_now = 1_800_000_000
    kw: dict[str, Any] = {"who": "m", "credential": "lea", "max_cost": 10**6, "est_cost": 10**6}
    await store.admit(org, "warm", **kw)  # the windows are open and used a little
    await store.settle(org, "warm", cost=12_345, model="m", usage={})[0]
    full = await store.admit(org, "dry", reserve=False, **kw)
    lean = await store.admit(org, "dry", reserve=False, lean=True, **kw)
    assert full.allowed and lean.allowed
    assert len(lean.raw) < len(full.raw) * 2 // 3
    assert {k: v for k, v in lean.raw.items()} == {k: full.raw[k] for k in lean.raw}
    assert unified_headers(lean) == unified_headers(full)
    # a lean admission replays as answered
    a = await store.admit(org, "r1", lean=True, **kw)
    replay = await store.admit(org, "r1", lean=True, **kw)
    assert {k: v for k, v in replay.raw.items() if k != "replay"} == a.raw
    # a denial is answered whole: its explanation needs the rest, which a lean admission
    # reads only then (the role, a pending reload, whether requests are on)
    await exhaust_seat(store, org, "lea")
    k = store.keys(org)
    await store.client.hset(k.org, mapping={"ar_pending": "rl-x", "requests_on": "0"})
    await store.client.hset(k.members, "lea|role", "admin")
    denied = await store.admit(org, "r2", lean=True, **kw)
    assert not denied.allowed
    assert denied.raw.keys() == full.raw.keys()
    whole = await store.admit(org, "r2", reserve=False, **kw)
    assert denied.raw == {**whole.raw, "rid": "r2"}
    assert (denied["role"], denied["reload_pending"], denied["requests_on"]) == (
        "admin",
        "rl-x",
        "0",
    )


async def test_strings_that_need_escaping_come_back_intact(proxy: Proxy) -> None:
    # the scripts write their answers out directly; what the admin API would never let in
    # (a member id, an upstream reference or a role with a quote, a backslash, a newline or
    # non-ASCII in it) still comes back intact: in admit's "|"-joined answer as in settle's
    # JSON
    org = await proxy.org("team")
    await proxy.member(org, "bea")
    store = proxy.store
    k = store.keys(org)
    odd = 'we"ird\\id\n\u00e9'
    fields = await store.client.hgetall(k.members)
    await store.client.hset(
        k.members,
        mapping={
            odd.encode() + name[len(b"bea") :]: value
            for name, value in fields.items()
            if name.startswith(b"bea|")
        },
    )
    await store.client.hset(k.members, f"{odd}|role", 'own"er\\')
    await store.client.hset(k.org, "upstream", 'ref"\\1\t')
    kw: dict[str, Any] = {"who": "m", "credential": odd, "max_cost": 10**6, "est_cost": 10**6}
    for lean in (True, False):
        a = await store.admit(org, f'r"{lean}', lean=lean, **kw)
        assert a.allowed
        assert (a["member"], a["upstream"]) == (odd, 'ref"\\1\t')
        if not lean:
            assert (a["role"], a["rid"]) == ('own"er\\', f'r"{lean}')
        replay = await store.admit(org, f'r"{lean}', lean=lean, **kw)
        assert {n: v for n, v in replay.raw.items() if n != "replay"} == a.raw
        result = await store.settle(org, f'r"{lean}', cost=5, model="m", usage={})[0]
        assert (result["member"], result["cost"]) == (odd, "5")
        again = await store.settle(org, f'r"{lean}', cost=5, model="m", usage={})[0]
        assert {n: v for n, v in again.items() if n != "replay"} == result
        record = await store.operation(org, f'r"{lean}')
        assert record is not None
        assert (record["member"], record["s"]) == (odd, Op.SETTLED)
    assert (await member_counters(store, org, odd))["s_used"] == 10


async def test_a_flushed_library_and_script_cache_are_survived(proxy: Proxy) -> None:
    """A restarted Redis keeps nothing: the library is loaded again by the first call that
    finds its function missing, and the call goes through; the same in EVALSHA mode."""
    org = await proxy.org("team")
    key = await proxy.member(org, "cid")
    store = proxy.store
    assert store.library.functions
    await store.client.function_flush()
    await store.client.script_flush()
    assert not await store.client.function_list(library=store.library.name)
    status, _, body = await proxy.post(key, message())
    assert status == 200, body
    await proxy.settled()
    assert await store.client.function_list(library=store.library.name)
    # a server without functions: EVALSHA, and NOSCRIPT loads the script
    store.library.evalsha_only()
    await store.client.script_flush()
    status, _, body = await proxy.post(key, message())
    assert status == 200, body
    await proxy.settled()
    assert await store.client.script_exists(store.scripts["admit"].sha) == [True]
    assert len(await store.ledger(org)) == 2


async def test_200_concurrent_requests_counters_equal_ledger(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "dan", tier="premium")
    bodies = [message(text="x" * (i % 37), stream=i % 2 == 0) for i in range(200)]
    results = await asyncio.gather(*(proxy.post(key, b) for b in bodies))
    assert [r[0] for r in results] == [200] * 200
    expected = sum(expected_cost(proxy.config.prices, b) for b in bodies)
    counters = await member_counters(proxy.store, org, "dan")
    assert await ledger_sum(proxy.store, org) == expected
    assert counters["s_used"] == counters["w_used"] == counters["inc"] == expected
    assert counters["eu_res"] == 0
    assert len(await proxy.store.ledger(org)) == 200


async def test_seat_limit_refuses_with_rate_limit_error(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "eve")
    # one request over the whole $4 session allowance: soft limit, it is still included
    status, _, _ = await proxy.post(
        key, message(max_tokens=300_000), headers={"x-mock-output-tokens": "300000"}
    )
    assert status == 200
    calls = len(proxy.mock.requests)
    status, headers, body = await proxy.post(key, message())
    assert status == 429
    doc = orjson.loads(body)
    assert doc["type"] == "error"
    assert doc["error"]["type"] == "rate_limit_error"
    assert "You've hit your session limit · resets" in doc["error"]["message"]
    assert "Extra usage is off for your organization" in doc["error"]["message"]
    assert headers["x-should-retry"] == "false"
    assert 17_000 < int(headers["retry-after"]) <= 18_000
    assert headers["anthropic-ratelimit-unified-status"] == "rejected"
    assert headers["anthropic-ratelimit-unified-representative-claim"] == "five_hour"
    assert headers["anthropic-ratelimit-unified-overage-disabled-reason"] == "org_level_disabled"
    assert float(headers["anthropic-ratelimit-unified-5h-utilization"]) > 1
    assert len(proxy.mock.requests) == calls  # never reached the upstream
    assert len(await proxy.store.ledger(org)) == 1


async def test_warning_header_from_75_percent(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "fay")
    # $3.10 of a $4 session: 77.5 %
    await proxy.post(
        key,
        message(max_tokens=300_000),
        headers={"x-mock-output-tokens": "206667", "x-mock-input-tokens": "0"},
    )
    status, headers, _ = await proxy.post(key, message())
    assert status == 200
    assert headers["anthropic-ratelimit-unified-status"] == "allowed_warning"


async def test_windows_reset_when_they_close(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "gus")
    store = proxy.store
    t0 = 1_800_000_000
    store.pinned_now = t0
    await proxy.post(key, message(max_tokens=300_000), headers={"x-mock-output-tokens": "300000"})
    assert (await proxy.post(key, message()))[0] == 429
    store.pinned_now = t0 + 18_000  # the session window closed; the weekly one is open
    status, _, _ = await proxy.post(key, message())
    assert status == 200
    counters = await member_counters(store, org, "gus")
    assert counters["s_used"] < counters["w_used"]


async def test_lua_calendar_months_match_python(proxy: Proxy) -> None:
    lib = script_source("admit").split("\nlocal function admit(")[0]
    snippet = lib + "\nlocal p, e = month_of(tonumber(ARGV[1]))\nreturn {p, fmt(e)}"
    probe = proxy.store.client.register_script(snippet)
    moments = [
        0,
        951_782_399,
        951_782_400,
        1_709_251_199,
        1_709_251_200,
        1_798_761_599,
        4_107_542_400,
        1_764_547_200 - 1,
        1_764_547_200,
    ]
    moments += list(range(1_700_000_000, 1_900_000_000, 2_345_678))
    for t in moments:
        period, end = await probe(keys=[], args=[t])
        d = datetime.fromtimestamp(t, UTC)
        ny, nm = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        assert period.decode() == f"{d.year:04d}-{d.month:02d}", t
        assert int(end) == calendar.timegm((ny, nm, 1, 0, 0, 0)), t


@pytest.mark.parametrize("stream", [False, True])
async def test_a_metered_request_is_exactly_two_script_calls(proxy: Proxy, stream: bool) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "tess")
    await proxy.post(key, message())  # warm: the first admission of a key is no different
    await proxy.settled()

    async def calls() -> tuple[int, int]:
        stats = await proxy.store.client.info("commandstats")
        fcall, evalsha = stats.get("cmdstat_fcall", {}), stats.get("cmdstat_evalsha", {})
        return int(fcall.get("calls", 0)), int(evalsha.get("calls", 0))

    fcalls, evalshas = await calls()
    status, _, _ = await proxy.post(key, message(stream=stream))
    await proxy.settled()
    assert status == 200
    # admit, settle: nothing else, and both the library's functions
    assert await calls() == (fcalls + 2, evalshas)


async def test_each_window_says_its_status_and_the_threshold_it_passed(proxy: Proxy) -> None:
    org = await proxy.org("team")
    key = await proxy.member(org, "gil")
    status, headers, _ = await proxy.post(key, message())
    assert (status, headers["anthropic-ratelimit-unified-5h-status"]) == (200, "allowed")
    assert "anthropic-ratelimit-unified-5h-surpassed-threshold" not in headers
    # $3.10 of a $4 session: 77.5 %; then $3.85: 96 %
    for output, util_status, passed in (
        ("206667", "allowed_warning", "0.75"),
        ("50000", "allowed_warning", "0.95"),
    ):
        await proxy.post(
            key,
            message(max_tokens=300_000),
            headers={"x-mock-output-tokens": output, "x-mock-input-tokens": "0"},
        )
        status, headers, _ = await proxy.post(key, message())
        assert headers["anthropic-ratelimit-unified-5h-status"] == util_status
        assert headers["anthropic-ratelimit-unified-5h-surpassed-threshold"] == passed
        assert headers["anthropic-ratelimit-unified-7d-status"] == "allowed"  # $4 of $40


@pytest.mark.parametrize("functions", [True, False])
async def test_redis_py_calls_load_what_is_missing(proxy: Proxy, functions: bool) -> None:
    """Without the pipeliner (a cluster's first calls, TLS, the tools), a call that finds
    the library or its script missing loads it and goes through, in either mode."""
    org = await proxy.org("team")
    main = proxy.store
    store = Store(
        main.client, prefix=main.prefix, tiers={}, policy=main.policy, functions=functions
    )
    await store.client.function_flush()
    await store.client.script_flush()
    with pytest.raises(StoreRefusal, match="unknown_credential"):
        await store.whois(org, "k", "0" * 64)
    library = await store.client.function_list(library=store.library.name)
    assert bool(library) is functions


async def test_concurrent_requests_after_the_library_is_lost_are_each_charged_once(
    proxy: Proxy,
) -> None:
    """A Redis that lost the library (restarted, flushed) under load: every call of the
    batches in flight finds its function missing, one FUNCTION LOAD goes out ahead of them,
    and each runs once — 60 answers, 60 ledger entries, counters equal to the ledger."""
    org = await proxy.org("team")
    key = await proxy.member(org, "lou")
    await proxy.post(key, message())
    await proxy.settled()
    await proxy.store.client.function_flush()
    results = await asyncio.gather(*(proxy.post(key, message()) for _ in range(60)))
    assert [r[0] for r in results] == [200] * 60
    await proxy.settled()
    assert len(await proxy.store.ledger(org)) == 61
    counters = await member_counters(proxy.store, org, "lou")
    assert counters["inc"] == await ledger_sum(proxy.store, org)
    assert counters["s_used"] == counters["inc"]


async def test_every_value_of_the_answer_is_in_its_place(proxy: Proxy) -> None:
    """admit answers its values "|"-joined, in the order of FULL_FIELDS: every one of them,
    read by name, is what the state says (a value out of place would read as another's)."""
    org = await proxy.org("team", upstream="ref-1", limit="7000000000", balance="5000000000")
    await proxy.member(org, "ivy", tier="premium", role="admin")
    store = proxy.store
    t = 1_800_000_000
    store.pinned_now = t
    kw: dict[str, Any] = {"who": "m", "credential": "ivy", "max_cost": 10**6, "est_cost": 10**5}
    await store.admit(org, "first", **kw)
    await store.settle(org, "first", cost=12_345, model="m", usage={})[0]
    store.pinned_now = t + 60
    a = await store.admit(org, "chk:second", reserve=False, **kw)
    month_end = calendar.timegm((2027, 2, 1, 0, 0, 0))  # t is in January 2027
    assert a.raw == {
        "ok": "1",
        "d": "allow",
        "mode": "included",
        "reason": "",
        "amount": "0",
        "tier": "premium",
        "member": "ivy",
        "upstream": "ref-1",
        "policy": store.policy.reservation,
        "s_used": "12345",
        "s_allow": "20000000000",
        "s_reset": str(t + 18_000),
        "w_used": "12345",
        "w_allow": "200000000000",
        "w_reset": str(t + 604_800),
        "eu_available": "0",
        "eu_reason": "org_level_disabled",
        "eu_reset": str(month_end),
        "spend": "0",
        "org_spend": "0",
        "member_limit": "",
        "tier_limit": "",
        "org_limit": "7000000000",
        "rid": "chk:second",
        "plan": "team",
        "key": "",
        "role": "admin",
        "now": str(t + 60),
        "period": "2027-01",
        "eu_on": "0",
        "eu_remaining": "5000000000",  # the balance: less room than the org limit
        "fits": "1",
        "consent": "automatic",
        "consented": "0",
        "balance": "5000000000",
        "reserved": "0",
        "requests_on": "1",
        "reload_pending": "",
    }
    assert list(a.raw) == list(FULL_FIELDS)


async def test_every_value_of_a_settlement_is_in_its_place(proxy: Proxy) -> None:
    """settle answers its record, "|"-joined in Op.SETTLED_FIELDS's order; read by name,
    each value is what the charge did (Team, extra usage: the balance drawn, a reload asked)."""
    org = await proxy.org("team")
    await proxy.member(org, "oz")
    store = proxy.store
    t = 1_800_000_000
    store.pinned_now = t
    await exhaust_seat(store, org, "oz")
    k = store.keys(org)
    await store.client.hset(
        k.org,
        mapping={
            "eu_on": "1",
            "balance": "3000000000",
            "ar_on": "1",
            "ar_threshold": "2500000000",
            "ar_amount": "10000000000",
        },
    )
    kw: dict[str, Any] = {"who": "m", "credential": "oz", "max_cost": 10**9, "est_cost": 10**8}
    a = await store.admit(org, "req-oz", **kw)
    assert a["mode"] == "extra_usage" and a["amount"] == str(10**8)
    result = await store.settle(org, "req-oz", cost=600_000_000, model="m", usage={})[0]
    entry = (await store.ledger(org))[-1]["id"]
    assert result == {
        "ok": 1,
        "mode": "extra_usage",
        "cost": "600000000",
        "overshoot": "500000000",
        "reserved": "100000000",
        "balance": "2400000000",
        "period": "2027-01",
        "tier": "standard",
        "reload_id": "rl-req-oz",
        "reload_amount": "10000000000",
        "entry": entry,
        "expired": "0",
        "estimated": "0",
        "member": "oz",
    }
    again = await store.settle(org, "req-oz", cost=600_000_000, model="m", usage={})[0]
    assert again == {**result, "replay": "1"}


async def test_records_of_the_version_before_are_settled_released_and_replayed(
    proxy: Proxy,
) -> None:
    """A rollout mixes versions: a check API reservation made on a proxy of the version
    before (its record: the JSON answer, a newline, "r|amount|mode|tier|member") is settled,
    released, renewed and replayed by this one, exactly once."""
    org = await proxy.org("team")
    await proxy.member(org, "ula")
    store = proxy.store
    store.pinned_now = 1_800_000_000
    await exhaust_seat(store, org, "ula")
    k = store.keys(org)
    await store.client.hset(k.org, mapping={"eu_on": "1", "balance": "9000000000"})
    kw: dict[str, Any] = {"who": "m", "credential": "ula", "max_cost": 10**9, "est_cost": 10**8}

    async def as_before(rid: str) -> Any:
        a = await store.admit(org, rid, **kw)
        assert a["mode"] == "extra_usage" and a["amount"] == str(10**8)
        old = orjson.dumps({**a.raw, "ok": 1}).decode()
        old += f"\nr|{a['amount']}|{a['mode']}|{a['tier']}|{a['member']}"
        await store.client.set(op_key(k, rid), old, ex=3600)
        return a

    a = await as_before("chk:old-1")
    replay = await store.admit(org, "chk:old-1", **kw)
    assert replay["replay"] == "1" and replay["amount"] == a["amount"]
    record = await store.operation(org, "chk:old-1")
    assert record is not None and (record["s"], record["a"], record["m"]) == (
        "r",
        "100000000",
        "ula",
    )
    assert (await store.renew(org, "chk:old-1"))["exp"] != ""
    result = await store.settle(org, "chk:old-1", cost=250_000_000, model="m", usage={})[0]
    assert (result["mode"], result["reserved"], result["expired"]) == (
        "extra_usage",
        str(10**8),
        "0",
    )
    again = await store.settle(org, "chk:old-1", cost=250_000_000, model="m", usage={})[0]
    assert again["replay"] == "1" and len(await store.ledger(org)) == 1

    await as_before("chk:old-2")
    assert (await store.release(org, "chk:old-2"))["released"] == str(10**8)
    counters = await member_counters(store, org, "ula")
    assert counters["eu_res"] == 0 and counters["spend"] == 250_000_000
    assert int((await store.org_settings(org))["eu_res"]) == 0


async def test_an_answer_holding_a_separator_is_refused_not_read_shifted(proxy: Proxy) -> None:
    """A value no API lets in (a "|" in the org's upstream reference, written to Redis by
    hand) would shift every value after it: the admission is refused (500, in words an
    operator can act on, not an outage to fail open for), nothing reaches the API and
    nothing is charged."""
    org = await proxy.org("team")
    key = await proxy.member(org, "pip")
    await proxy.store.client.hset(proxy.store.keys(org).org, "upstream", "ref|1")
    sent = len(proxy.mock.requests)
    status, _, body = await proxy.post(key, message())
    assert status == 500, body
    assert b"the proxy cannot read" in body
    await proxy.settled()
    assert len(proxy.mock.requests) == sent
    # the check API says the same (not a 409 about the caller's request)
    body_doc = {
        "org_id": org,
        "member_id": "pip",
        "model": "claude-sonnet-4-5",
        "input_tokens": 10,
        "max_tokens": 10,
        "request_id": "sep-1",
    }
    auth = {"authorization": f"Bearer {SERVICE}"}
    async with proxy.session.post(proxy.url + "/v1/usage/check", json=body_doc, headers=auth) as r:
        assert r.status == 500
        assert "the proxy cannot read" in (await r.json())["error"]["message"]
    assert await proxy.store.ledger(org) == []
    assert (await member_counters(proxy.store, org, "pip"))["s_used"] == 0
