"""The only client of Redis: nothing outside ``proxy.storage`` talks to it.

Scripts live in ``lua/`` (one file per atomic operation, shipped in the package as
``proxy.lua``), get the shared prelude ``lib.lua`` and the data model's defaults prepended
(``proxy.storage.scripts``), are loaded as one Redis Functions library (or one by one, where
the server has no functions: ``proxy.storage.functions``), and are called as their spec
builds the call, with FCALL (or EVALSHA): on a single Redis through the process's
multiplexed connection (``proxy.storage.pipelining``), on a cluster or over TLS through
redis-py; both load the library again when a call finds it missing. Redis errors become
``StoreUnavailable`` here and nowhere else; a script's own "no" becomes ``StoreRefusal``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.config import PolicyConfig, RedisConfig, TierConfig
from proxy.core.admission import Admission, MalformedAnswer, parse_answer
from proxy.core.errors import StoreUnavailable
from proxy.core.statements import calendar_month
from proxy.core.vocabulary import Refusal
from proxy.obs.logs import Throttled
from proxy.obs.metrics import Metrics
from proxy.storage.functions import Library, LuaScript
from proxy.storage.keys import OrgKeys, op_key, org_keys, orgs_index
from proxy.storage.model import (
    DELETE,
    ENCODING_FIELD,
    ENCODING_VALUE,
    OFF,
    ON,
    Cred,
    Ledger,
    Member,
    Op,
)
from proxy.storage.pipelining import ClusterPipeliner, Pipeliner
from proxy.storage.scripts import (
    ADMIT,
    CREDENTIAL,
    DECIDE,
    PURCHASE,
    RELEASE,
    RENEW,
    SETTLE,
    WHOIS,
    WRITE,
    WRITE_TARGETS,
    Reply,
    ScriptSpec,
    script_source,
)

RedisClient = aioredis.Redis | RedisCluster


# the refusal of a reply the store cannot read: a value no API lets in (a "|" in an
# admission's answer) that would shift every value after it
UNREADABLE = Refusal.UNREADABLE

# how a caller names a member to admit and whois: by a credential's hash, of a proxy key or
# an admin token; or (admit, the check API) by the member's id
PROXY_KEY: Final = Cred.PROXY_KEY
ADMIN_TOKEN: Final = Cred.ADMIN_TOKEN
BY_MEMBER_ID: Final = "m"


def check_op_id(request_id: str) -> str:
    """The operation id of a check API request id (apart from the proxy's own ids)."""
    return Op.CHECK_PREFIX + request_id


def who_enabled(who: Mapping[str, str]) -> bool:
    """Whether whois found the member enabled."""
    return who["enabled"] != OFF


def unavailable(exc: RedisError) -> str:
    """What a client is told: the kind of failure, never the library's text (it names hosts
    and ports)."""
    return f"the usage store is unavailable ({type(exc).__name__}); try again shortly"


failures = Throttled(logging.getLogger(__name__))

__all__ = [
    "ADMIN_TOKEN",
    "BY_MEMBER_ID",
    "DELETE",
    "NOT_SENT",
    "PROXY_KEY",
    "Store",
    "StoreRefusal",
    "check_op_id",
    "make_client",
    "script_source",
    "who_enabled",
]


class StoreRefusal(Exception):
    """A script refused an operation: unknown key, released reservation, guard failed..."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


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
    """Every Redis call of the product: the scripts by their spec, and the few plain reads
    (settings, a member's fields, the streams) that need no atomicity."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        tiers: Mapping[str, TierConfig],
        policy: PolicyConfig,
        metrics: Metrics | None = None,
        pipelining: bool = False,
        owns_client: bool = False,
        functions: bool = True,
    ) -> None:
        self.client = client
        self.metrics = metrics
        self.prefix = prefix
        self.policy = policy
        self.tiers_spec = tiers_spec(tiers)
        self.owns_client = owns_client
        # test-only: a pinned epoch second passed to every script instead of Redis TIME
        self.pinned_now = 0
        self._month: tuple[str, int, int] = ("", 0, 0)
        # the scripts, as one Redis Functions library (or EVALSHA: ``functions``)
        self.library = Library(client, functions)
        self.scripts: dict[str, LuaScript] = self.library.scripts
        # one write for the script calls of one event-loop turn (on a cluster, one per
        # master: every key of a call is in its org's slot)
        self.pipeliner: Pipeliner | ClusterPipeliner | None = None
        if pipelining and Pipeliner.supports(client):
            self.pipeliner = Pipeliner(client, self.library)
        elif pipelining and ClusterPipeliner.supports(client):
            self.pipeliner = ClusterPipeliner(client, self.library)

    def keys(self, org: str) -> OrgKeys:
        return org_keys(self.prefix, org)

    def month(self) -> tuple[str, int, int]:
        """This host's calendar month (UTC): ("YYYY-MM", its first second, the next month's),
        handed to the request path's scripts, which take it when their own clock falls
        inside and compute the month only otherwise (at a month's edge, or a pinned time)."""
        month = self._month
        if not month[1] <= time.time() < month[2]:
            month = self._month = calendar_month(time.time())
        return month

    def window_of(self, op_id: str) -> int:
        """How long an operation's record outlives it, for replays: a check API id keeps
        its idempotency for ``check_id_window_s``, the proxy's for ``replay_window_s``."""
        if op_id.startswith(Op.CHECK_PREFIX):
            return self.policy.check_id_window_s
        return self.policy.replay_window_s

    async def close(self) -> None:
        """Close the multiplexed connection, and the client when this store opened it."""
        try:
            if self.pipeliner is not None:
                await self.pipeliner.close()
        finally:
            if self.owns_client:
                await self.client.aclose()

    def _call(
        self,
        spec: ScriptSpec,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
        tail: tuple[str | int, ...] = (),
    ) -> Awaitable[Any]:
        """Queue one script call (auto-pipelined) or start it (redis-py); await the reply.
        The script's arguments are ``args`` then ``tail`` (the spec's two parts: the tail's
        values come from a small set, so that the pipeliner packs them once)."""
        script = self.scripts[spec.name]
        if self.pipeliner is not None:
            return self.pipeliner.call(script, keys, args, tail, spec.own_keys)
        return script(keys=list(keys), args=[*args, *tail])

    async def _reply(
        self,
        spec: ScriptSpec,
        started: float,
        reply: Awaitable[Any],
        decode: Callable[[Any], Reply] = orjson.loads,
    ) -> Reply:
        """A script's reply, decoded (JSON; admit's answer: ``admission_reply``); Redis
        errors become StoreUnavailable, refusals StoreRefusal."""
        try:
            raw = await reply
        except RedisError as exc:
            if self.metrics is not None:
                self.metrics.redis_errors.labels(spec.name).inc()
            failures.warning("redis", "redis call failed", script=spec.name, error=repr(exc))
            raise StoreUnavailable(unavailable(exc)) from exc
        if self.metrics is not None:
            m = self.metrics
            m.child(m.redis_latency, spec.name).observe(time.perf_counter() - started)
        try:
            doc: Reply = decode(raw)
        except MalformedAnswer as exc:
            # not an outage (nothing to fail open for, nothing to retry): the operation is
            # refused, and each caller's refusal path says so
            failures.warning("redis", "malformed reply", script=spec.name, error=str(exc))
            raise StoreRefusal(UNREADABLE, str(exc)) from exc
        if doc.get("ok") == 0:
            raise StoreRefusal(doc.get("err", "refused"), doc.get("detail", ""))
        return doc

    def _run(
        self,
        spec: ScriptSpec,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
        tail: tuple[str | int, ...] = (),
    ) -> Coroutine[Any, Any, Reply]:
        """Call a script with its ARGV as its spec built it (``spec.args_of(...)``,
        ``spec.tail_of(...)``); await its decoded reply (no coroutine of its own: one frame
        less on every wake-up of the request path)."""
        return self._reply(spec, time.perf_counter(), self._call(spec, keys, args, tail))

    async def _cmd(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as exc:
            if self.metrics is not None:
                self.metrics.redis_errors.labels("command").inc()
            failures.warning("redis", "redis command failed", error=repr(exc))
            raise StoreUnavailable(unavailable(exc)) from exc

    async def load_scripts(self) -> None:
        """Load every script (readiness); a call would also load them when missing."""
        await self._cmd(self.library.load())

    async def ping(self) -> bool:
        return bool(await self._cmd(self.client.ping()))

    async def run_id(self) -> str:
        """Redis's run id (on a Cluster, every master's, in order): it changes when a server
        restarts — and what a restarted server has is what its persistence kept."""
        info = await self._cmd(self.client.info("server"))
        if "run_id" in info:
            return str(info["run_id"])
        ids = sorted(str(v.get("run_id")) for v in info.values() if isinstance(v, dict))
        return ",".join(ids)

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
        unbounded: bool = False,
    ) -> Admission:
        """Decide and reserve (admit.lua). ``lean``: when allowed, only what the proxy reads
        (``LEAN_FIELDS``); a denial is always answered whole."""
        policy = self.policy
        call = self._call(
            ADMIT,
            ADMIT.keys_of(self.keys(org), request_id),
            ADMIT.args_of(
                request_id=request_id,
                who=who,
                credential=credential,
                max_cost=max_cost,
                est_cost=est_cost,
            ),
            ADMIT.tail_of(
                policy=policy.reservation,
                reservation_ttl_s=policy.reservation_ttl_s,
                accept=ON if accept_extra else OFF,
                reserve=ON if reserve else OFF,
                pinned_now=self.pinned_now,
                window_s=self.window_of(request_id),
                force=ON if force else OFF,
                lean=ON if lean else OFF,
                unbounded=ON if unbounded else OFF,
                period=(month := self.month())[0],
                period_start=month[1],
                period_end=month[2],
                tiers=self.tiers_spec,
            ),
        )
        return Admission(await self._reply(ADMIT, time.perf_counter(), call, admission_reply))

    def settle(
        self,
        org: str,
        request_id: str,
        *,
        cost: int,
        model: str,
        usage: Mapping[str, int],
        source: str = "proxy",
        estimated: bool = False,
    ) -> tuple[Coroutine[Any, Any, Reply], Awaitable[bool]]:
        """Send a settlement; (its reply, resolving True once it is written to Redis).

        Written means ordered: Redis runs the calls of one connection in order, so anything
        this process sends afterwards — the member's next admission — sees the charge. False
        (the connection is down, or no auto-pipelining): only the reply tells.
        """
        started = time.perf_counter()
        call = self._call(
            SETTLE,
            SETTLE.keys_of(self.keys(org), request_id),
            SETTLE.args_of(
                request_id=request_id,
                cost=cost,
                model=model,
                usage=orjson.dumps(usage).decode(),
            ),
            SETTLE.tail_of(
                pinned_now=self.pinned_now,
                window_s=self.window_of(request_id),
                source=source,
                estimated=ON if estimated else OFF,
                period=(month := self.month())[0],
                period_start=month[1],
                period_end=month[2],
            ),
        )
        sent: Awaitable[bool] = self.pipeliner.sent() if self.pipeliner is not None else NOT_SENT
        return self._reply(SETTLE, started, call, settlement_reply), sent

    def release(self, org: str, request_id: str) -> Coroutine[Any, Any, Reply]:
        return self._run(
            RELEASE,
            RELEASE.keys_of(self.keys(org), request_id),
            RELEASE.args_of(request_id=request_id),
            RELEASE.tail_of(window_s=self.window_of(request_id)),
        )

    def renew(self, org: str, request_id: str) -> Coroutine[Any, Any, Reply]:
        """Renew a running request's reservation for another ``reservation_ttl_s``."""
        return self._run(
            RENEW,
            RENEW.keys_of(self.keys(org), request_id),
            RENEW.args_of(request_id=request_id),
            RENEW.tail_of(
                reservation_ttl_s=self.policy.reservation_ttl_s,
                pinned_now=self.pinned_now,
                window_s=self.window_of(request_id),
            ),
        )

    # -- money in ------------------------------------------------------------------------

    def purchase(
        self, org: str, idempotency_key: str, amount: int, actor: str
    ) -> Coroutine[Any, Any, Reply]:
        return self._credit(org, "purchase", Op.PURCHASE + idempotency_key, amount, actor)

    def confirm_reload(self, org: str, reload_id: str, actor: str) -> Coroutine[Any, Any, Reply]:
        return self._credit(org, "reload", Op.RELOAD + reload_id, 0, actor)

    def _credit(
        self, org: str, kind: str, op_id: str, amount: int, actor: str
    ) -> Coroutine[Any, Any, Reply]:
        return self._run(
            PURCHASE,
            PURCHASE.keys_of(self.keys(org), op_id),
            PURCHASE.args_of(kind=kind, op_id=op_id, amount=amount, actor=actor),
            PURCHASE.tail_of(pinned_now=self.pinned_now, window_s=self.policy.check_id_window_s),
        )

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
    ) -> Reply:
        """Change fields of one of the org's hashes (``target``: "org", "members" or
        "requests"), under guards, with an audit entry in the same atomic step (write.lua)."""
        if target not in WRITE_TARGETS:
            raise ValueError(f"write.lua changes only {', '.join(WRITE_TARGETS)} (not {target})")
        k = self.keys(org)
        args = WRITE.args_of(
            actor=actor, action=action, pinned_now=self.pinned_now, guards="\n".join(guards)
        )
        pairs: list[str | int] = []
        for f, v in fields.items():
            pairs += [f, v]
        keys = (getattr(k, target), k.audit)
        return await self._reply(
            WRITE, time.perf_counter(), self._call(WRITE, keys, (*args, *pairs))
        )

    async def decide(
        self,
        org: str,
        request_id: str,
        *,
        actor: str,
        action: str,
        expected: str,
        record: str,
        member: str = "",
        org_fields: Mapping[str, str] | None = None,
        member_fields: Mapping[str, str] | None = None,
    ) -> Reply:
        """An extra usage request's decision (its record, ``expected`` before) and the
        limits it raises, with one audit entry, in one atomic step (decide.lua): of two
        concurrent decisions exactly one has any effect."""
        org_fields, member_fields = org_fields or {}, member_fields or {}
        pairs: list[str | int] = []
        for f, v in (*org_fields.items(), *member_fields.items()):
            pairs += [f, v]
        args = DECIDE.args_of(
            actor=actor,
            action=action,
            pinned_now=self.pinned_now,
            request_id=request_id,
            expected=expected,
            record=record,
            member=member,
            org_pairs=len(org_fields),
        )
        return await self._run(DECIDE, DECIDE.keys_of(self.keys(org)), (*args, *pairs))

    async def create_org(self, org: str, fields: Mapping[str, str], actor: str) -> None:
        await self.update(
            org, "org", actor=actor, action="org.create", fields=fields, guards=["-plan"]
        )
        k = self.keys(org)
        for key in (k.org, k.members, k.creds):  # model.ENCODING_FIELD: why
            await self._cmd(self.client.hset(key, ENCODING_FIELD, ENCODING_VALUE))
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
        await self._run(
            CREDENTIAL,
            CREDENTIAL.keys_of(self.keys(org)),
            CREDENTIAL.args_of(
                op=op,
                kind=kind,
                secret_hash=secret_hash,
                member=member,
                cred_id=cred_id,
                actor=actor,
                pinned_now=self.pinned_now,
            ),
        )

    def whois(self, org: str, kind: str, secret_hash: str) -> Coroutine[Any, Any, Reply]:
        keys = WHOIS.keys_of(self.keys(org))
        return self._run(WHOIS, keys, WHOIS.args_of(kind=kind, secret_hash=secret_hash))

    # -- plain reads ---------------------------------------------------------------------

    async def org_settings(self, org: str) -> dict[str, str]:
        return await self.hash_fields(org, "org")

    async def member_fields(self, org: str, member: str, names: Sequence[str]) -> dict[str, str]:
        if not names:
            return {}
        fields = [Member.field(member, n) for n in names]
        values = await self._cmd(self.client.hmget(self.keys(org).members, fields))
        return {n: as_str(v) for n, v in zip(names, values, strict=True) if v is not None}

    async def members(self, org: str) -> dict[str, dict[str, str]]:
        """Every member's fields, by member id (the org's whole members hash, one read)."""
        out: dict[str, dict[str, str]] = {}
        for f, v in (await self.hash_fields(org, "members")).items():
            member, name = Member.split(f)
            if member:
                out.setdefault(member, {})[name] = v
        return out

    async def hash_fields(self, org: str, target: str) -> dict[str, str]:
        raw = await self._cmd(self.client.hgetall(getattr(self.keys(org), target)))
        return {as_str(f): as_str(v) for f, v in raw.items()}

    async def primary_owner(self, org: str) -> str | None:
        v = await self._cmd(self.client.hget(self.keys(org).members, Member.PRIMARY))
        return None if v is None else as_str(v)

    async def org_ids(self) -> list[str]:
        """Every org id (the orgs index set: never a scan of the keyspace)."""
        return sorted(
            as_str(o) for o in await self._cmd(self.client.smembers(orgs_index(self.prefix)))
        )

    async def operation(self, org: str, op_id: str) -> dict[str, str] | None:
        """One request's record (``Op.decode``), None once it has expired or never was."""
        raw = await self._cmd(self.client.get(op_key(self.keys(org), op_id)))
        return None if raw is None else Op.decode(as_str(raw))

    async def operations(self, org: str) -> dict[str, dict[str, str]]:
        """Every operation record the org holds in Redis, by id (a scan: tests and
        operators, not the request path)."""
        prefix = self.keys(org).ops
        out: dict[str, dict[str, str]] = {}
        # an org id has no glob characters (ids.ORG_ID)
        async for key in self.client.scan_iter(match=prefix + "*", count=1000):
            raw = await self._cmd(self.client.get(key))
            if raw is not None:
                op_id = as_str(key)[len(prefix) :]
                if not op_id.startswith((Op.RELOAD, Op.PURCHASE)):
                    out[op_id] = Op.decode(as_str(raw))
        return out

    async def ledger(self, org: str, count: int | None = 10_000) -> list[dict[str, str]]:
        """The org's ledger stream as it is (entries the sink has not moved yet), oldest
        first; ``count=None``: every entry, read in pages."""
        stream = self.keys(org).ledger
        page = count if count is not None else 10_000
        out: list[dict[str, str]] = []
        start = "-"
        while True:
            rows = await self._cmd(self.client.xrange(stream, min=start, count=page))
            out += stream_entries(rows)
            if count is not None or len(rows) < page:
                return out
            start = "(" + out[-1]["id"]

    async def ledger_position(self, org: str) -> tuple[str, int]:
        """(last id written, entries ever added) of the org's ledger stream."""
        try:
            info = await self._cmd(self.client.xinfo_stream(self.keys(org).ledger))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, ResponseError) and "no such key" in str(exc.__cause__):
                return "0-0", 0
            raise
        last = as_str(info.get("last-generated-id") or b"0-0")
        return last, int(info.get("entries-added", info.get("length", 0)))

    async def audit(
        self, org: str, count: int = 200, before: str | None = None
    ) -> list[dict[str, str]]:
        """The newest ``count`` audit entries, newest first; ``before``: those older than
        that entry id (a page's cursor)."""
        newest = "+" if before is None else "(" + before
        rows = await self._cmd(self.client.xrevrange(self.keys(org).audit, max=newest, count=count))
        return stream_entries(rows)


class _NotSent:
    """An awaitable that is False at once (redis-py sends a call only when awaited)."""

    def __await__(self) -> Generator[Any, None, bool]:
        return False
        yield  # a generator that never suspends


NOT_SENT = _NotSent()


def _refusal_or_text(raw: bytes | str) -> tuple[Reply | None, str]:
    """A script's reply: (the JSON document, "") when it is JSON — a refusal, or what the
    version before answered — else (None, its text)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text[:1] == "{":
        doc: Reply = orjson.loads(text)
        return doc, ""
    return None, text


def admission_reply(raw: bytes | str) -> Reply:
    """admit's reply: its answer ("|"-joined values: ``parse_answer``), or JSON: a refusal,
    or the replayed answer of a record the version before wrote (its fields by name)."""
    doc, text = _refusal_or_text(raw)
    return doc if doc is not None else parse_answer(text)


def settlement_reply(raw: bytes | str) -> Reply:
    """settle's reply: the settled record (``Op.settled``; "2" in front for a replay), or a
    refusal (JSON)."""
    refusal, text = _refusal_or_text(raw)
    if refusal is not None:
        return refusal
    replay = text[:1] == "2"
    doc: Reply = Op.settled(text[1:] if replay else text)
    doc["ok"] = 1
    if replay:
        doc["replay"] = "1"
    return doc


def as_str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def stream_entries(rows: Sequence[Any]) -> list[dict[str, str]]:
    """Stream entries as dicts with their id (an entry deleted meanwhile has no fields), a
    packed ledger entry unpacked (``Ledger.unpack``)."""
    return [
        Ledger.unpack({"id": as_str(i), **{as_str(f): as_str(v) for f, v in d.items()}})
        for i, d in rows
        if d is not None
    ]
