"""The conservation harness: every token the API served is charged exactly once, and no
limit is passed, whatever fails.

Each scenario runs the real thing — ``extra-usage-proxy serve`` (its workers real processes,
so that ``kill -9`` is real), a redis-server, and the built-in mock of the Messages API, which
records what it served (``served``: the usage it reported and the text it wrote) — then
compares, request by request, what the mock served with what the ledger charged, and the
spend of every member, tier and org with its limit. Requests are told apart by their input
token count (unique in a run: the body's size, ~4 bytes a token, which is also what the
estimate rule charges when the API's own count never came).

    .venv/bin/python bench/conservation.py [--only NAME ...] [--json FILE]

prints, per scenario: requests, served cost, charged cost, the difference (nano-USD),
requests uncharged, charged twice, the most any limit was passed, and — where a worker or
the proxy is killed — how many requests were charged within [what the member was sent, what
the API served]. The fast scenarios are also tests (tests/functional/test_conservation.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import parse_config  # noqa: E402
from proxy.core.pricing import PriceTable, usage_from_mapping  # noqa: E402
from proxy.core.usage import tokens_of_chars  # noqa: E402
from proxy.storage.keys import org_keys  # noqa: E402
from proxy.storage.store import stream_entries  # noqa: E402
from proxy.tools.embedded import RedisServer, free_port  # noqa: E402
from proxy.tools.mock_upstream import MockUpstream, build_mock_app  # noqa: E402

BIN = Path(sys.executable).parent / "extra-usage-proxy"
OPERATOR = "conservation-operator"
SERVICE = "conservation-service"
MODEL = "claude-sonnet-4-5"
NANO = 10**9


ALWAYS = ("--appendonly", "yes", "--appendfsync", "always")  # Redis's strictest persistence


@dataclass
class Row:
    scenario: str
    requests: int = 0
    served: int = 0  # nano-USD the mock served
    charged: int = 0  # nano-USD the ledger charged
    uncharged: int = 0  # requests served something and charged nothing
    twice: int = 0  # requests with more than one charge
    over_limit: int = 0  # nano-USD: the most any limit or balance was passed
    within: str = ""  # kill scenarios: charged within [sent, served] / requests in flight
    notes: str = ""

    @property
    def difference(self) -> int:
        return self.charged - self.served


@dataclass
class Sent:
    """What the member got of one request."""

    n: int  # its input tokens: the request's id in the run
    status: int = 0
    text_chars: int = 0
    started: bool = False  # message_start came (streams)
    complete: bool = False


@dataclass
class Stack:
    """redis-server, the mock (in this process, to read what it served) and the proxy."""

    workers: int = 1
    policy: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    aof: bool = False
    sink: bool = False  # a PostgreSQL and a running ledger-sink: charges counted in both

    async def start(self) -> Stack:
        self.dir = Path(tempfile.mkdtemp(prefix="eup-conservation-"))
        self.journal = self.dir / "journal"
        extra = ("--appendonly", "yes", "--appendfsync", "always") if self.aof else ()
        (self.dir / "redis").mkdir()
        self.redis = RedisServer(*extra, directory=self.dir / "redis").start()
        self.mock = MockUpstream()
        # the mock's writes to a proxy that closed the request (the point of most scenarios)
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        self.mock_runner = web.AppRunner(build_mock_app(self.mock))
        await self.mock_runner.setup()
        self.mock_port = free_port()
        await web.TCPSite(self.mock_runner, "127.0.0.1", self.mock_port).start()
        self.port = free_port()
        self.config_path = self.dir / "proxy.toml"
        policy = {"journal_dir": str(self.journal), **self.policy}
        doc = {
            "policy": policy,
            "upstream": self.upstream,
            "tiers": {
                "standard": {"session_allowance": "0", "weekly_allowance": "0"},
                "premium": {"session_allowance": "0", "weekly_allowance": "0"},
            },
        }
        self.config_path.write_text(_toml(doc))
        self.prices: PriceTable = parse_config(
            doc, "<conservation>", {"OPERATOR_TOKEN": OPERATOR}
        ).prices
        self.proc: subprocess.Popen[bytes] | None = None
        self.pg: Any = None
        self.db: Any = None
        self.sink_proc: subprocess.Popen[bytes] | None = None
        if self.sink:
            await self.start_sink()
        self.start_proxy()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.client = aioredis.Redis.from_url(self.redis.url)
        await self.wait_ready()
        return self

    async def start_sink(self) -> None:
        """A throwaway PostgreSQL, migrated, and ``ledger-sink`` moving the streams into it."""
        from proxy.ledger.db import LedgerDB
        from tests.servers import PostgresServer

        self.pg = PostgresServer().start()
        self.db = await LedgerDB.connect(self.pg.url)
        await self.db.migrate()
        self.run_sink()

    def run_sink(self) -> None:
        env = {**os.environ, "REDIS_URL": self.redis.url, "DATABASE_URL": self.pg.url}
        with open(self.dir / "sink.log", "ab") as log:
            self.sink_proc = subprocess.Popen(
                [str(BIN), "ledger-sink", "--interval", "0.2"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def start_proxy(self) -> None:
        env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "OPERATOR_TOKEN": OPERATOR,
            "SERVICE_TOKEN": SERVICE,
            "UPSTREAM_URL": f"http://127.0.0.1:{self.mock_port}",
            "UPSTREAM_API_KEY": "sk-conservation",
            "PYTHONWARNINGS": "ignore",
        }
        cmd = [str(BIN), "serve", "--config", str(self.config_path), "--port", str(self.port)]
        cmd += ["--workers", str(self.workers)]
        with open(self.dir / "proxy.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.dir,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    async def wait_ready(self) -> None:
        for _ in range(300):
            try:
                async with aiohttp.ClientSession() as s, s.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        await asyncio.sleep(0.3)  # every worker listening
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("the proxy did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        if self.workers == 1:
            return [self.proc.pid]
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [
            int(p)
            for p in out.split()
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()  # not the tracker
        ]

    def kill_proxy(self) -> None:
        """kill -9 of the whole proxy (every process of it)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method,
            self.url + path,
            json=body,
            headers={"authorization": f"Bearer {OPERATOR}"},
        ) as r:
            doc = await r.json(content_type=None)
            if r.status >= 300:
                raise RuntimeError(f"{method} {path}: {r.status} {doc}")
            return doc

    async def check_api(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """A first-party backend's call to the check API: (the status, the answer)."""
        headers = {"authorization": f"Bearer {SERVICE}"}
        async with self.session.post(self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def org(self, name: str, plan: str, members: int, **eu: Any) -> tuple[str, list[str]]:
        await self.admin("POST", "/admin/v1/orgs", {"id": name, "name": name, "plan": plan})
        keys = []
        for i in range(members):
            await self.admin(
                "PUT", f"/admin/v1/orgs/{name}/members/m{i}", {"role": "member", "tier": "standard"}
            )
            keys.append(
                (await self.admin("POST", f"/admin/v1/orgs/{name}/members/m{i}/keys"))["key"]
            )
        doc = {"enabled": True, "member_consent": "automatic", **eu}
        await self.admin("PATCH", f"/admin/v1/orgs/{name}/extra-usage", doc)
        return name, keys

    async def restart_redis(self, *extra: str, down_s: float = 0.0, lose_aof: bool = False) -> None:
        """kill -9 of Redis, ``down_s`` seconds down, then a new server on the same port and
        folder (``extra``: its persistence; ``lose_aof``: back from its last snapshot alone,
        as after a host crash that lost the log's tail), and this harness's client on it."""
        port, folder = self.redis.port, self.redis.dir
        self.redis.kill()
        if lose_aof:
            shutil.rmtree(Path(folder) / "appendonlydir", ignore_errors=True)
        await asyncio.sleep(down_s)
        self.redis = RedisServer(*extra, port=port, directory=folder).start()
        await self.client.aclose()
        self.client = aioredis.Redis.from_url(self.redis.url)

    async def ledger(self, org: str) -> list[dict[str, str]]:
        """The org's ledger: what is still in its Redis stream, and (with a sink) what is in
        PostgreSQL — an entry in both (written, not yet trimmed) once."""
        entries = stream_entries(await self.client.xrange(org_keys("eup", org).ledger))
        if self.db is None:
            return entries
        seen = {e["op"] for e in entries}
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT op_id, kind, cost_nano AS cost, input_tokens FROM ledger_entries "
                "WHERE org_id = $1",
                org,
            )
        for r in rows:
            if r["op_id"] not in seen:
                usage = orjson.dumps({"input_tokens": r["input_tokens"]}).decode()
                entries.append(
                    {"op": r["op_id"], "kind": r["kind"], "cost": str(r["cost"]), "usage": usage}
                )
        return entries

    async def spends(self, org: str) -> dict[str, int]:
        """Every monthly extra-usage counter and the balance, by name."""
        k = org_keys("eup", org)
        o = {a.decode(): b.decode() for a, b in (await self.client.hgetall(k.org)).items()}
        m = {a.decode(): b.decode() for a, b in (await self.client.hgetall(k.members)).items()}
        out = {"org": int(o.get("spend", 0)), "balance": int(o.get("balance", 0))}
        for f, v in {**o, **m}.items():
            if f.endswith("|spend") or f.startswith("tspend:"):
                out[f] = int(v)
        return out

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_proxy()
        await self.session.close()
        await self.client.aclose()
        await self.mock_runner.cleanup()
        if self.sink_proc is not None:
            self.sink_proc.terminate()
            self.sink_proc.wait(15)
        if self.db is not None:
            await self.db.close()
            self.pg.cleanup()
        self.redis.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


def _toml(doc: dict[str, Any], prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((f"{prefix}{k}", v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(lines) + "\n"
    for name, sub in tables:
        out += f"[{name}]\n" + _toml(sub, f"{name}.")
    return out


class Load:
    """Requests of one scenario, each with a unique input token count."""

    def __init__(self, stack: Stack, start: int = 1000) -> None:
        self.stack = stack
        self.next = start
        self.sent: dict[int, Sent] = {}

    def body(
        self, stream: bool, max_tokens: int, extra: dict[str, Any] | None = None
    ) -> tuple[bytes, int]:
        extra = dict(extra or {})
        blocks = extra.pop("blocks", None)  # content blocks before the request's own text
        while True:
            text = "x" * (4 * self.next)
            content: Any = text if blocks is None else [*blocks, {"type": "text", "text": text}]
            doc = {
                "model": MODEL,
                "max_tokens": max_tokens,
                "stream": stream,
                "messages": [{"role": "user", "content": content}],
                **extra,
            }
            raw = orjson.dumps(doc)
            self.next += 1
            n = tokens_of_chars(len(raw))
            if n not in self.sent:
                return raw, n

    def at_work(
        self, keys: list[str], workers: int = 8, stream: bool | None = None, **send: Any
    ) -> tuple[asyncio.Event, list[asyncio.Future[None]]]:
        """Members sending request after request until the event is set (streams and JSON
        answers alternating, unless ``stream``)."""
        stop = asyncio.Event()

        async def member(i: int) -> None:
            while not stop.is_set():
                alternate = i % 2 == 0 if stream is None else stream
                await self.send(keys[i % len(keys)], stream=alternate, **send)

        return stop, [asyncio.ensure_future(member(i)) for i in range(workers)]

    async def send(
        self,
        key: str,
        *,
        stream: bool = True,
        max_tokens: int = 200,
        output: int = 100,
        headers: dict[str, str] | None = None,
        leave_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Sent:
        raw, n = self.body(stream, max_tokens, extra)
        sent = self.sent[n] = Sent(n)
        h = {
            "x-api-key": key,
            "content-type": "application/json",
            "x-mock-input-tokens": str(n),
            "x-mock-output-tokens": str(output),
            **(headers or {}),
        }
        work = self._exchange(raw, h, sent, stream)
        try:
            if leave_after is None:
                await work
            else:
                await asyncio.wait_for(work, leave_after)  # the member goes away
        except (TimeoutError, aiohttp.ClientError, asyncio.IncompleteReadError):
            pass
        return sent

    async def _exchange(self, raw: bytes, h: dict[str, str], sent: Sent, stream: bool) -> None:
        async with self.stack.session.post(
            self.stack.url + "/v1/messages", data=raw, headers=h
        ) as r:
            sent.status = r.status
            if r.status != 200:
                await r.read()
                return
            if not stream:
                doc = orjson.loads(await r.read())
                sent.text_chars = sum(len(b.get("text", "")) for b in doc.get("content", []))
                sent.started = sent.complete = True
                return
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if b"event: message_start" in event:
                        sent.started = True
                    elif b"event: content_block_delta" in event:
                        data = event.split(b"data: ", 1)[1]
                        sent.text_chars += len(orjson.loads(data)["delta"].get("text", ""))
                    elif b"event: message_stop" in event:
                        sent.complete = True


def served_by_n(stack: Stack) -> dict[int, int]:
    out: dict[int, int] = {}
    for rec in stack.mock.requests:
        n = int(rec["headers"].get("x-mock-input-tokens", 0))
        served = rec.get("served")
        cost = 0 if not served else stack.prices.cost(MODEL, usage_from_mapping(served))
        out[n] = out.get(n, 0) + cost
    return out


async def charges(stack: Stack, orgs: list[str]) -> dict[int, list[int]]:
    """Every usage charge in the orgs' ledgers, by request (its input token count)."""
    out: dict[int, list[int]] = {}
    for org in orgs:
        for e in await stack.ledger(org):
            if e["kind"] == "usage":
                n = orjson.loads(e["usage"])["input_tokens"]
                out.setdefault(n, []).append(int(e["cost"]))
    return out


def tally(row: Row, served: dict[int, int], charged: dict[int, list[int]]) -> Row:
    """Served against charged, request by request (every charge counts, a stray one too)."""
    for n in served.keys() | charged.keys():
        s, c = served.get(n, 0), charged.get(n, [])
        row.served += s
        row.charged += sum(c)
        row.uncharged += s > 0 and not c
        row.twice += len(c) > 1
    return row


async def account(stack: Stack, load: Load, orgs: list[str], scenario: str) -> Row:
    """Served against charged, request by request."""
    row = Row(scenario, requests=len(load.sent))
    return tally(row, served_by_n(stack), await charges(stack, orgs))


async def settle_down(stack: Stack, load: Load, orgs: list[str], within: float = 20) -> None:
    """Wait until every request the mock served something for has its charge (or time)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        served = {n for n, c in served_by_n(stack).items() if c > 0}
        charged = (await charges(stack, orgs)).keys()
        files = list(stack.journal.glob("*.jsonl")) if stack.journal.exists() else []
        if served <= charged and len(files) <= stack.workers:  # dead workers' replayed
            await asyncio.sleep(0.3)
            return
        await asyncio.sleep(0.2)


def over(spends: dict[str, int], limits: dict[str, int]) -> int:
    """The most any counter passed its limit (the balance: below zero)."""
    worst = max([0, -spends.get("balance", 0)] if "balance" in limits else [0])
    for name, limit in limits.items():
        if name != "balance":
            worst = max(worst, spends.get(name, 0) - limit)
    return worst


# -- the scenarios ----------------------------------------------------------------------------


async def clean(stack: Stack) -> Row:
    org, keys = await stack.org("clean", "enterprise", 4)
    load = Load(stack)
    await asyncio.gather(*(load.send(keys[i % 4], stream=i % 2 == 0) for i in range(200)))
    await settle_down(stack, load, [org])
    return await account(stack, load, [org], "clean")


async def upstream_faults(stack: Stack) -> Row:
    org, keys = await stack.org("faults", "enterprise", 2)
    load = Load(stack)
    faults = [
        ({"x-mock-fault": "status-529"}, True),
        ({"x-mock-fault": "status-500"}, False),
        ({"x-mock-fault": "error-event"}, True),
        ({"x-mock-fault": "drop"}, True),
        ({"x-mock-fault": "drop"}, False),
        ({"x-mock-fault": "no-delta"}, True),
        ({"x-mock-delay-ms": "20", "x-mock-events": "10"}, True),
        ({"x-mock-delay-ms": "20", "x-mock-events": "10"}, False),
    ]
    await asyncio.gather(
        *(
            load.send(keys[i % 2], stream=stream, headers=h)
            for i in range(10)
            for h, stream in faults
        )
    )
    await settle_down(stack, load, [org])
    return await account(
        stack, load, [org], "upstream faults (529, 500, error event, drop, no delta, slow)"
    )


async def members_leaving(stack: Stack) -> Row:
    org, keys = await stack.org("leaving", "enterprise", 2)
    load = Load(stack)
    slow = {"x-mock-delay-ms": "200", "x-mock-events": "20"}
    stages = [
        ({"x-mock-first-byte-ms": "3000"}, True, 0.3),  # before the first byte
        ({"x-mock-first-byte-ms": "1000"}, False, 0.01),  # at once: while it is sent
        (slow, True, 0.5),  # mid-stream
        (slow, False, 0.5),  # mid-body of a JSON answer
    ]
    await asyncio.gather(
        *(
            load.send(keys[i % 2], stream=stream, headers=h, output=400, leave_after=t)
            for i in range(10)
            for h, stream, t in stages
        )
    )
    await asyncio.sleep(1.0)
    await settle_down(stack, load, [org])
    return await account(stack, load, [org], "members leaving at every stage")


async def _kill(stack: Stack, whole: bool, name: str) -> Row:
    org, keys = await stack.org(name.split()[0], "enterprise", 4)
    load = Load(stack)
    slow = {"x-mock-delay-ms": "100", "x-mock-events": "40"}
    tasks = [
        asyncio.ensure_future(load.send(keys[i % 4], stream=i % 3 != 0, headers=slow, output=400))
        for i in range(60)
    ]
    await asyncio.sleep(1.5)
    if whole:
        stack.kill_proxy()
        await asyncio.gather(*tasks)
        stack.start_proxy()  # a restart replays what the dead processes left
        await stack.wait_ready()
    else:
        os.kill(stack.worker_pids()[0], signal.SIGKILL)  # the other worker recovers it
        await asyncio.gather(*tasks)
    await settle_down(stack, load, [org], within=30)
    row = await account(stack, load, [org], name)
    served = served_by_n(stack)
    charged = {n: sum(c) for n, c in (await charges(stack, [org])).items()}
    cut = [s for s in load.sent.values() if not s.complete]
    ok = 0
    for s in cut:
        got = stack.prices.cost(
            MODEL,
            usage_from_mapping(
                {
                    "input_tokens": s.n if s.started else 0,
                    "output_tokens": tokens_of_chars(s.text_chars),
                }
            ),
        )
        ok += got <= charged.get(s.n, 0) <= served.get(s.n, 0)
    row.within = f"{ok}/{len(cut)}"
    row.notes = "difference: what the API served past what reached the proxy before the kill"
    return row


async def kill_worker(stack: Stack) -> Row:
    return await _kill(stack, False, "kill -9 of one of two workers")


async def kill_proxy(stack: Stack) -> Row:
    return await _kill(stack, True, "kill -9 of the proxy, then a restart")


async def redis_kill_aof(stack: Stack) -> Row:
    org, keys = await stack.org("redisdown", "enterprise", 4)
    load = Load(stack)
    slow = {"x-mock-delay-ms": "100", "x-mock-events": "20"}
    tasks = [
        asyncio.ensure_future(load.send(keys[i % 4], stream=i % 2 == 0, headers=slow))
        for i in range(40)
    ]
    await asyncio.sleep(0.5)
    # kill -9: settlements of the requests in flight fail, journaled
    await stack.restart_redis(*ALWAYS, down_s=2.5)
    await asyncio.gather(*tasks)
    await settle_down(stack, load, [org], within=30)
    return await account(stack, load, [org], "Redis kill -9 (AOF always), fail_closed")


async def fail_open_two_workers(stack: Stack) -> Row:
    org, keys = await stack.org("failopen", "enterprise", 4)
    load = Load(stack)
    stop, tasks = load.at_work(keys, output=20)
    for _ in range(2):  # two outages
        await asyncio.sleep(1.0)
        await stack.restart_redis(*ALWAYS, down_s=2.0)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    await settle_down(stack, load, [org], within=30)
    return await account(stack, load, [org], "fail_open, two workers, two Redis outages")


async def strict_limits(stack: Stack) -> Row:
    """500 concurrent requests on member, tier and org limits (Enterprise) and a Team
    balance, web searches among them, under strict."""
    ent, ekeys = await stack.org(
        "strictent", "enterprise", 5, monthly_limit="3.00", reservation_policy="strict"
    )
    for i in range(5):
        await stack.admin(
            "PUT", f"/admin/v1/orgs/{ent}/extra-usage/members/m{i}", {"monthly_limit": "1.00"}
        )
    await stack.admin(
        "PUT", f"/admin/v1/orgs/{ent}/extra-usage/tiers/standard", {"monthly_limit": "2.50"}
    )
    team, tkeys = await stack.org("strictteam", "team", 3, reservation_policy="strict")
    await stack.admin(
        "POST",
        f"/admin/v1/orgs/{team}/extra-usage/purchases",
        {"amount": "2.00", "idempotency_key": "p"},
    )
    load = Load(stack)
    search = {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]}
    await asyncio.gather(
        *(
            load.send(
                (ekeys if i % 2 else tkeys)[i % (5 if i % 2 else 3)],
                stream=i % 3 == 0,
                max_tokens=2000,
                output=2000,
                headers={"x-mock-web-searches": "3"} if i % 4 == 0 else None,
                extra=search if i % 4 == 0 else None,
            )
            for i in range(500)
        )
    )
    await settle_down(stack, load, [ent, team])
    row = await account(
        stack,
        load,
        [ent, team],
        "strict, 500 concurrent: member, tier, org limits, Team balance, web search",
    )
    e, t = await stack.spends(ent), await stack.spends(team)
    limits = {f"m{i}|spend": NANO for i in range(5)} | {
        "tspend:standard": 2_500_000_000,
        "org": 3 * NANO,
    }
    row.over_limit = max(over(e, limits), over(t, {"balance": 0}))
    return row


async def long_streams(stack: Stack) -> Row:
    """Streams three times longer than reservation_ttl_s, with short requests competing for
    the same member limit under strict."""
    org, keys = await stack.org("long", "enterprise", 2, reservation_policy="strict")
    for i in range(2):
        await stack.admin(
            "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/m{i}", {"monthly_limit": "0.50"}
        )
    load = Load(stack)
    long = {"x-mock-delay-ms": "300", "x-mock-events": "20"}
    tasks = [
        asyncio.ensure_future(load.send(keys[i], max_tokens=20_000, output=20_000, headers=long))
        for i in range(2)
    ]
    await asyncio.sleep(4.0)  # past the TTL: the leases hold
    await asyncio.gather(
        *(load.send(keys[i % 2], max_tokens=20_000, output=20_000) for i in range(20))
    )
    await asyncio.gather(*tasks)
    await settle_down(stack, load, [org])
    row = await account(stack, load, [org], "strict, streams past reservation_ttl_s (2 s)")
    row.over_limit = over(await stack.spends(org), {f"m{i}|spend": NANO // 2 for i in range(2)})
    return row


async def check_api_races(stack: Stack) -> Row:
    """A first-party backend through the check API: 100 reservations under a member limit,
    each settled five times at once (replays and races), and each request id tried by
    another member too (a 409 that charges no one)."""
    org, _ = await stack.org("checkapi", "enterprise", 2, reservation_policy="strict")
    await stack.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/m0", {"monthly_limit": "1.00"}
    )
    row = Row("check API: settles replayed and raced, request ids reused by another member")
    served: dict[int, int] = {}
    post = stack.check_api

    async def one(i: int) -> None:
        n = 5000 + i
        ask = {
            "org_id": org,
            "member_id": "m0",
            "model": MODEL,
            "input_tokens": n,
            "max_tokens": 1000,
            "request_id": f"chat-{i}",
        }
        _, d = await post("/v1/usage/check", ask)
        if d.get("decision") != "allow":
            return
        taken, _ = await post("/v1/usage/check", {**ask, "member_id": "m1"})
        assert taken == 409, taken  # the id is m0's: nobody else reserves or is charged on it
        usage = {"input_tokens": n, "output_tokens": 1000}
        served[n] = stack.prices.cost(MODEL, usage_from_mapping(usage))
        settle = {"reservation_id": d["reservation_id"], "usage": usage}
        await asyncio.gather(*(post("/v1/usage/settle", settle) for _ in range(5)))

    await asyncio.gather(*(one(i) for i in range(100)))
    row.requests = 100
    tally(row, served, await charges(stack, [org]))
    row.over_limit = over(await stack.spends(org), {"m0|spend": NANO, "m1|spend": 0})
    return row


async def check_api_search(stack: Stack) -> Row:
    """A first-party backend declaring web search through the check API under strict: 40
    reservations of 5 searches ($0.05 each) at once on a $0.10 member limit, each settled
    with its searches — the limit holds (before the check API took tools: $2.07 spent)."""
    org, _ = await stack.org("checksearch", "enterprise", 1, reservation_policy="strict")
    await stack.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/m0", {"monthly_limit": "0.10"}
    )
    row = Row("check API under strict: web search declared in check, 40 at once")
    served: dict[int, int] = {}
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}

    async def one(i: int) -> None:
        n = 7000 + i
        ask = {
            "org_id": org,
            "member_id": "m0",
            "model": MODEL,
            "input_tokens": n,
            "max_tokens": 10,
            "request_id": f"search-{i}",
            "tools": [search],
        }
        _, d = await stack.check_api("/v1/usage/check", ask)
        if d.get("decision") != "allow":
            return
        usage = {
            "input_tokens": n,
            "output_tokens": 10,
            "server_tool_use": {"web_search_requests": 5},
        }
        served[n] = stack.prices.cost(MODEL, usage_from_mapping(usage))
        settle = {"reservation_id": d["reservation_id"], "usage": usage}
        status, doc = await stack.check_api("/v1/usage/settle", settle)
        assert status == 200, doc

    await asyncio.gather(*(one(i) for i in range(40)))
    row.requests = 40
    tally(row, served, await charges(stack, [org]))
    row.over_limit = over(await stack.spends(org), {"m0|spend": NANO // 10})
    return row


async def check_api_long(stack: Stack) -> Row:
    """Check API reservations that outlive reservation_ttl_s (2 s), renewed while they run,
    with 20 short ones competing for the same $0.50 member limit under strict."""
    org, _ = await stack.org("checklong", "enterprise", 1, reservation_policy="strict")
    await stack.admin(
        "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/m0", {"monthly_limit": "0.50"}
    )
    row = Row("check API under strict: reservations renewed past reservation_ttl_s")
    served: dict[int, int] = {}

    async def post(path: str, body: dict[str, Any]) -> Any:
        return (await stack.check_api(path, body))[1]

    async def one(i: int, long: bool) -> None:
        n = 9000 + i
        ask = {
            "org_id": org,
            "member_id": "m0",
            "model": MODEL,
            "input_tokens": n,
            "max_tokens": 10_000,
            "request_id": f"long-{i}",
        }
        d = await post("/v1/usage/check", ask)
        if d.get("decision") != "allow":
            return
        rsv = {"reservation_id": d["reservation_id"]}
        if long:
            for _ in range(4):  # 4 s: twice the TTL, renewed each second
                await asyncio.sleep(1)
                await post("/v1/usage/renew", rsv)
        usage = {"input_tokens": n, "output_tokens": 10_000}
        served[n] = stack.prices.cost(MODEL, usage_from_mapping(usage))
        await post("/v1/usage/settle", {**rsv, "usage": usage})

    longs = [asyncio.ensure_future(one(i, True)) for i in range(2)]
    await asyncio.sleep(2.5)  # past the TTL: the renewed reservations hold their room
    await asyncio.gather(*(one(i, False) for i in range(2, 22)))
    await asyncio.gather(*longs)
    row.requests = 22
    tally(row, served, await charges(stack, [org]))
    row.over_limit = over(await stack.spends(org), {"m0|spend": NANO // 2})
    return row


async def url_inputs(stack: Stack) -> Row:
    """Requests with an image given by URL (which the API fetches and bills as input) on
    extra usage: refused under strict, which cannot bound them; nothing served or charged
    for them, and the limit holds."""
    org, keys = await stack.org("urls", "enterprise", 2, reservation_policy="strict")
    for i in range(2):
        await stack.admin(
            "PUT", f"/admin/v1/orgs/{org}/extra-usage/members/m{i}", {"monthly_limit": "0.20"}
        )
    load = Load(stack)
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    extra = {"blocks": [image]}
    await asyncio.gather(
        *(load.send(keys[i % 2], max_tokens=100, output=100, extra=extra) for i in range(20))
    )
    await asyncio.gather(*(load.send(keys[i % 2], max_tokens=100, output=100) for i in range(20)))
    await settle_down(stack, load, [org])
    row = await account(stack, load, [org], "strict: documents and images by URL refused")
    row.over_limit = over(await stack.spends(org), {f"m{i}|spend": NANO // 5 for i in range(2)})
    return row


async def sink_faults(stack: Stack) -> Row:
    """Members at work while the ledger sink meets its faults: PostgreSQL stopped and
    resumed, an entry it refuses (a NUL in a model, as an older version could write) in the
    stream, Redis killed and restarted (AOF always): every charge reaches PostgreSQL once,
    the refused entry goes to the dead-letter stream and is charged to no one."""
    org, keys = await stack.org("sinkfaults", "enterprise", 4)
    load = Load(stack)
    stop, tasks = load.at_work(keys, output=20)
    await asyncio.sleep(1.0)
    stack.pg.stop()  # PostgreSQL down: the sink waits it out
    await asyncio.sleep(2.0)
    stack.pg.resume()
    poisoned = {
        "op": "poisoned-entry",
        "kind": "usage",
        "ts": str(int(time.time())),
        "period": time.strftime("%Y-%m", time.gmtime()),
        "member": "m0",
        "tier": "standard",
        "mode": "extra_usage",
        "model": "claude\x00sonnet",
        "cost": "1",
        "balance_delta": "0",
        "usage": orjson.dumps({"input_tokens": 1}).decode(),
        "source": "proxy",
    }
    await stack.client.xadd(org_keys("eup", org).ledger, poisoned)
    await asyncio.sleep(1.0)
    # Redis down: members get 503 (fail_closed), the sink waits
    await stack.restart_redis(*ALWAYS, down_s=1.5)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    await settle_down(stack, load, [org], within=30)
    key = org_keys("eup", org).ledger
    for _ in range(300):  # the sink catches up: the stream empties
        if not await stack.client.xlen(key):
            break
        await asyncio.sleep(0.1)
    row = await account(
        stack, load, [org], "ledger sink: PostgreSQL and Redis outages, a refused entry"
    )
    dead = await stack.client.xlen(org_keys("eup", org).dead)
    row.twice += dead != 1  # the refused entry is in the dead letters, and only there
    return row


async def redis_rollback(stack: Stack) -> Row:
    """A host crash that loses what Redis acknowledged last (emulated: Redis comes back
    from a snapshot taken 1.5 s before it died, with streams running): the requests running
    at the crash are charged in full when they settle (their reservations were lost), the
    running sink rebuilds the counters from the ledger, and what was settled and sunk before
    the crash is in PostgreSQL. What was settled after the snapshot and not yet sunk is lost
    with it: counted here as uncharged."""
    org, keys = await stack.org("rollback", "enterprise", 4)
    load = Load(stack)
    slow = {"x-mock-delay-ms": "100", "x-mock-events": "10"}
    stop, tasks = load.at_work(keys, stream=True, output=20, headers=slow)
    await asyncio.sleep(1.5)
    await stack.client.save()  # what the "disk" will have
    await asyncio.sleep(1.5)
    await stack.restart_redis(lose_aof=True)  # back from the snapshot alone
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*tasks)
    await settle_down(stack, load, [org], within=30)
    key = org_keys("eup", org).ledger
    for _ in range(300):
        if not await stack.client.xlen(key):
            break
        await asyncio.sleep(0.1)
    return await account(
        stack, load, [org], "Redis back from an older snapshot (a host crash), sink running"
    )


SCENARIOS: dict[str, tuple[Callable[[Stack], Awaitable[Row]], dict[str, Any]]] = {
    "clean": (clean, {}),
    "faults": (upstream_faults, {}),
    "leaving": (members_leaving, {}),
    "kill_worker": (kill_worker, {"workers": 2}),
    "kill_proxy": (kill_proxy, {}),
    "redis_kill": (redis_kill_aof, {"aof": True}),
    "fail_open": (
        fail_open_two_workers,
        {"workers": 2, "aof": True, "policy": {"fail_mode": "open"}},
    ),
    "strict": (strict_limits, {}),
    "check_api": (check_api_races, {}),
    "check_api_search": (check_api_search, {}),
    "check_api_long": (
        check_api_long,
        {"policy": {"reservation_ttl_s": 2}, "upstream": {"read_timeout_s": 1}},
    ),
    "url_inputs": (url_inputs, {}),
    "sink_faults": (sink_faults, {"aof": True, "sink": True}),
    "redis_rollback": (redis_rollback, {"sink": True}),
    "long_streams": (
        long_streams,
        {"policy": {"reservation_ttl_s": 2}, "upstream": {"read_timeout_s": 1}},
    ),
}
FAST = ("clean", "faults", "leaving", "kill_proxy", "strict", "check_api")


async def run_one(name: str) -> Row:
    fn, options = SCENARIOS[name]
    stack = await Stack(**options).start()
    try:
        return await fn(stack)
    finally:
        await stack.stop()


def table(rows: list[Row]) -> str:
    head = (
        "| scenario | requests | served $ | charged $ | difference (nano-USD) | uncharged "
        "| charged twice | over limit (nano-USD) | within [sent, served] |"
    )
    out = [head, "|" + "---|" * 9]
    for r in rows:
        out.append(
            f"| {r.scenario} | {r.requests} | {r.served / NANO:.6f} | {r.charged / NANO:.6f} | "
            f"{r.difference} | {r.uncharged} | {r.twice} | {r.over_limit} | {r.within or '—'} |"
        )
    return "\n".join(out)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(SCENARIOS))
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "conservation.json"))
    args = ap.parse_args()
    rows = []
    for name in args.only or SCENARIOS:
        row = await run_one(name)
        print(table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    print()
    print(table(rows))
    doc = json.dumps([{**asdict(r), "difference": r.difference} for r in rows], indent=2)
    await asyncio.to_thread(Path(args.json).write_text, doc + "\n")


if __name__ == "__main__":
    asyncio.run(main())
