"""The only module that talks to Redis.

Scripts live in ``lua/`` (one file per atomic operation, shipped in the package as
``proxy.lua``), get the shared prelude ``lib.lua`` prepended, are registered once, and are
called with EVALSHA: on a single Redis through the process's multiplexed connection
(``proxy.storage.pipelining``), on a cluster or over TLS through redis-py's ``Script``; both load a
script again on NOSCRIPT. Redis errors become
``StoreUnavailable`` here and nowhere else; a script's own "no" becomes ``StoreRefusal``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Coroutine, Generator, Mapping, Sequence
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.config import PolicyConfig, RedisConfig, TierConfig
from proxy.core.admission import Admission
from proxy.core.errors import StoreUnavailable
from proxy.obs.metrics import Metrics
from proxy.storage.keys import OrgKeys, org_keys, orgs_index
from proxy.storage.pipelining import Pipeliner

RedisClient = aioredis.Redis | RedisCluster

SCRIPT_NAMES = ("admit", "settle", "release", "purchase", "write", "credential", "whois")
# the keys each script takes, by OrgKeys attribute (a unit test checks they share one slot)
SCRIPT_KEYS: dict[str, tuple[str, ...]] = {
    "admit": ("org", "members", "creds", "ops", "due"),
    "settle": ("org", "members", "ops", "due", "ledger"),
    "release": ("org", "members", "ops", "due"),
    "purchase": ("org", "ops", "due", "ledger", "audit"),
    "credential": ("creds", "members", "audit"),
    "whois": ("org", "members", "creds"),
}

DELETE = "\0"  # the value that deletes a field in write.lua


class StoreRefusal(Exception):
    """A script refused an operation: unknown key, released reservation, guard failed..."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def script_source(name: str) -> str:
    pkg = resources.files("proxy.lua")
    return (
        pkg.joinpath("lib.lua").read_text("utf-8")
        + "\n"
        + pkg.joinpath(f"{name}.lua").read_text("utf-8")
    )


def tiers_spec(tiers: Mapping[str, TierConfig]) -> str:
    """The seat tiers as admit.lua reads them: each ";name,allowances,windows" (the leading
    ";" lets the script find a tier by name without parsing the others)."""
    return "".join(
        f";{t.name},{t.session_allowance},{t.weekly_allowance},"
        f"{t.session_window_s},{t.weekly_window_s}"
        for t in tiers.values()
    )


def make_client(cfg: RedisConfig) -> RedisClient:
    """The Redis client: it retries a call twice on connection errors and timeouts, briefly
    (every script is idempotent, so a call that ran but whose reply was lost is harmless),
    and then gives up quickly so that fail_closed / fail_open decide fast in an outage."""
    retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=2)
    errors: list[type[Exception]] = [RedisConnectionError, RedisTimeoutError]
    if cfg.cluster:
        return RedisCluster.from_url(
            cfg.url,
            socket_timeout=cfg.socket_timeout_s,
            socket_connect_timeout=cfg.socket_timeout_s,
            max_connections=cfg.max_connections,
            retry=retry,
            retry_on_error=errors,
            protocol=2,
        )
    # a blocking pool: a burst wider than the pool waits for a connection instead of failing
    pool = aioredis.BlockingConnectionPool.from_url(
        cfg.url,
        max_connections=cfg.max_connections,
        timeout=cfg.socket_timeout_s,
        socket_timeout=cfg.socket_timeout_s,
        socket_connect_timeout=cfg.socket_timeout_s,
        retry=retry,
        retry_on_error=errors,
        protocol=2,  # RESP2 with the hiredis parser: the cheapest replies to parse
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


class Store:
    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        tiers: Mapping[str, TierConfig],
        policy: PolicyConfig,
        metrics: Metrics | None = None,
        pipelining: bool = False,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.prefix = prefix
        self.policy = policy
        self.tiers_spec = tiers_spec(tiers)
        # test-only: a pinned epoch second passed to every script instead of Redis TIME
        self.pinned_now = 0
        self.scripts: dict[str, AsyncScript] = {
            name: client.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        # one write for the script calls of one event-loop turn (not on a cluster: there each
        # key goes to its own node)
        self.pipeliner = (
            Pipeliner(client, list(self.scripts.values()))
            if pipelining and Pipeliner.supports(client)
            else None
        )

    def keys(self, org: str) -> OrgKeys:
        return org_keys(self.prefix, org)

    def _call(
        self,
        name: str,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
        tail: tuple[str | int, ...] = (),
    ) -> Awaitable[Any]:
        """Queue one script call (auto-pipelined) or start it (redis-py); await the reply.
        The script's arguments are ``args`` then ``tail``: the last ones, when their values
        come from a small set (flags, settings), so that the pipeliner packs them once."""
        if self.pipeliner is not None:
            return self.pipeliner.call(self.scripts[name], keys, args, tail)
        return self.scripts[name](keys=list(keys), args=[*args, *tail])

    async def _reply(self, name: str, started: float, reply: Awaitable[Any]) -> Any:
        """A script's JSON reply; Redis errors become StoreUnavailable, refusals StoreRefusal."""
        try:
            raw = await reply
        except RedisError as exc:
            if self.metrics is not None:
                self.metrics.redis_errors.labels(name).inc()
            raise StoreUnavailable(f"the usage store (Redis) is unavailable: {exc}") from exc
        if self.metrics is not None:
            m = self.metrics
            m.child(m.redis_latency, name).observe(time.perf_counter() - started)
        doc = orjson.loads(raw)
        if doc.get("ok") == 0:
            raise StoreRefusal(doc.get("err", "refused"), doc.get("detail", ""))
        return doc

    def _run(
        self,
        name: str,
        keys: tuple[str, ...],
        args: Sequence[str | int],
        tail: tuple[str | int, ...] = (),
    ) -> Coroutine[Any, Any, Any]:
        """Call a script; await its decoded reply (no coroutine of its own: one frame less on
        every wake-up of the request path)."""
        return self._reply(name, time.perf_counter(), self._call(name, keys, tuple(args), tail))

    async def _cmd(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as exc:
            if self.metrics is not None:
                self.metrics.redis_errors.labels("command").inc()
            raise StoreUnavailable(f"the usage store (Redis) is unavailable: {exc}") from exc

    async def load_scripts(self) -> None:
        """Load every script (readiness); EVALSHA would also reload them on NOSCRIPT."""
        for script in self.scripts.values():
            await self._cmd(self.client.script_load(script.script))

    async def ping(self) -> bool:
        return bool(await self._cmd(self.client.ping()))

    # -- the request path: two round trips per metered request ---------------------------

    async def admit(
        self,
        org: str,
        request_id: str,
        *,
        who: str,
        credential: str,
        max_cost: int,
        est_cost: int,
        accept_extra: bool = False,
        reserve: bool = True,
        force: bool = False,
        lean: bool = False,
    ) -> Admission:
        """Decide and reserve (admit.lua). ``lean``: when allowed, only what the proxy reads
        (the decision, member, upstream credential, policy and the unified headers' fields);
        a denial is always answered whole."""
        k = self.keys(org)
        doc = await self._run(
            "admit",
            (k.org, k.members, k.creds, k.ops, k.due),
            (request_id, who, credential, max_cost, est_cost),
            (  # from a small set of values: packed once (ARGV[6] on)
                self.policy.reservation,
                self.policy.reservation_ttl_s,
                "1" if accept_extra else "0",
                "1" if reserve else "0",
                self.tiers_spec,
                self.pinned_now,
                self.policy.op_retention_s,
                "1" if force else "0",
                "1" if lean else "0",
            ),
        )
        return Admission(doc)

    def settle(
        self,
        org: str,
        request_id: str,
        *,
        cost: int,
        model: str,
        usage: Mapping[str, int],
        source: str = "proxy",
    ) -> tuple[Coroutine[Any, Any, dict[str, str]], Awaitable[bool]]:
        """Send a settlement; (its reply, resolving True once it is written to Redis).

        Written means ordered: Redis runs the calls of one connection in order, so anything
        this process sends afterwards — the member's next admission — sees the charge. False
        (the connection is down, or no auto-pipelining): only the reply tells.
        """
        k = self.keys(org)
        started = time.perf_counter()
        call = self._call(
            "settle",
            (k.org, k.members, k.ops, k.due, k.ledger),
            (request_id, cost, model, orjson.dumps(usage).decode()),
            (self.pinned_now, self.policy.op_retention_s, source),  # packed once (ARGV[5] on)
        )
        if self.pipeliner is not None:
            sent: Awaitable[bool] = self.pipeliner.sent()
        else:
            sent = NOT_SENT
        return self._reply("settle", started, call), sent

    async def release(self, org: str, request_id: str) -> dict[str, str]:
        k = self.keys(org)
        doc: dict[str, str] = await self._run(
            "release",
            (k.org, k.members, k.ops, k.due),
            (request_id, self.pinned_now, self.policy.op_retention_s),
        )
        return doc

    # -- money in ------------------------------------------------------------------------

    async def purchase(
        self, org: str, idempotency_key: str, amount: int, actor: str
    ) -> dict[str, str]:
        k = self.keys(org)
        doc: dict[str, str] = await self._run(
            "purchase",
            (k.org, k.ops, k.due, k.ledger, k.audit),
            (
                "purchase",
                f"purchase:{idempotency_key}",
                amount,
                actor,
                self.pinned_now,
                self.policy.op_retention_s,
            ),
        )
        return doc

    async def confirm_reload(self, org: str, reload_id: str, actor: str) -> dict[str, str]:
        k = self.keys(org)
        doc: dict[str, str] = await self._run(
            "purchase",
            (k.org, k.ops, k.due, k.ledger, k.audit),
            (
                "reload",
                f"reload:{reload_id}",
                0,
                actor,
                self.pinned_now,
                self.policy.op_retention_s,
            ),
        )
        return doc

    # -- administration ------------------------------------------------------------------

    async def update(
        self,
        org: str,
        target: str,
        *,
        actor: str,
        action: str,
        fields: Mapping[str, str],
        guards: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Change fields of one of the org's hashes (``target``: "org", "members" or
        "requests"), under guards, with an audit entry in the same atomic step (write.lua)."""
        k = self.keys(org)
        key = {"org": k.org, "members": k.members, "requests": k.requests}[target]
        args: list[str | int] = [actor, action, self.pinned_now, "\n".join(guards)]
        for f, v in fields.items():
            args += [f, v]
        doc: dict[str, Any] = await self._run("write", (key, k.audit), args)
        return doc

    async def create_org(self, org: str, fields: Mapping[str, str], actor: str) -> None:
        await self.update(
            org, "org", actor=actor, action="org.create", fields=fields, guards=["-plan"]
        )
        await self._cmd(self.client.sadd(orgs_index(self.prefix), org))

    async def credential(
        self,
        org: str,
        op: str,
        kind: str,
        *,
        member: str,
        cred_id: str,
        secret_hash: str = "",
        actor: str,
    ) -> None:
        k = self.keys(org)
        await self._run(
            "credential",
            (k.creds, k.members, k.audit),
            (op, kind, secret_hash, member, cred_id, actor, self.pinned_now),
        )

    async def whois(self, org: str, kind: str, secret_hash: str) -> dict[str, str]:
        k = self.keys(org)
        doc: dict[str, str] = await self._run(
            "whois", (k.org, k.members, k.creds), (kind, secret_hash)
        )
        return doc

    async def org_settings(self, org: str) -> dict[str, str]:
        raw = await self._cmd(self.client.hgetall(self.keys(org).org))
        return {_s(f): _s(v) for f, v in raw.items()}

    async def member_fields(self, org: str, member: str, names: Sequence[str]) -> dict[str, str]:
        fields = [f"{member}|{n}" for n in names]
        values = await self._cmd(self.client.hmget(self.keys(org).members, fields))
        return {n: _s(v) for n, v in zip(names, values, strict=True) if v is not None}

    async def hash_fields(self, org: str, target: str) -> dict[str, str]:
        k = self.keys(org)
        key = {"org": k.org, "members": k.members, "requests": k.requests}[target]
        raw = await self._cmd(self.client.hgetall(key))
        return {_s(f): _s(v) for f, v in raw.items()}

    async def primary_owner(self, org: str) -> str | None:
        v = await self._cmd(self.client.hget(self.keys(org).members, "|primary"))
        return None if v is None else _s(v)

    async def ledger(self, org: str, count: int = 10_000) -> list[dict[str, str]]:
        rows = await self._cmd(self.client.xrange(self.keys(org).ledger, count=count))
        return [{"id": _s(i), **{_s(f): _s(v) for f, v in d.items()}} for i, d in rows]

    async def audit(self, org: str, count: int = 200) -> list[dict[str, str]]:
        rows = await self._cmd(self.client.xrevrange(self.keys(org).audit, count=count))
        return [{"id": _s(i), **{_s(f): _s(v) for f, v in d.items()}} for i, d in rows]


class _NotSent:
    """An awaitable that is False at once (redis-py sends a call only when awaited)."""

    def __await__(self) -> Generator[Any, None, bool]:
        return False
        yield  # a generator that never suspends


NOT_SENT = _NotSent()


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
