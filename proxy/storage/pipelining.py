"""Auto-pipelining of script calls on one multiplexed connection.

The script calls (FCALL, or EVALSHA: ``proxy.storage.functions``) that requests make in the same
turn of the event loop go out in one write on one long-lived connection, and their replies,
which Redis sends in order, are matched to the callers in order. Each request still makes
exactly its two script calls; under concurrency they share writes, reads and wake-ups. The
connection speaks RESP itself (hiredis parses the replies): redis-py's per-call machinery — a
pool checkout, a timeout scope and a coroutine per reply — was most of the client's CPU per
request.

One connection per process also orders a process's calls: Redis runs them in the order they
were written.

Failures keep redis-py's contract: a connection that breaks or a reply slower than the socket
timeout fails the connection, and every unanswered call is sent again on a fresh one, twice
at most (every script is idempotent, so a call that ran but whose reply was lost is
harmless); after that the callers get ``ConnectionError``/``TimeoutError``. An error reply
fails only its own call. A missing function or script (NOSCRIPT: a restarted or flushed
Redis) loads the library and sends the call again on the same connection, ahead of anything
queued since, so the order holds; a second miss for the same call falls back to redis-py.

Plain TCP and Unix sockets, with AUTH and SELECT from the URL; on a Redis Cluster one such
connection per master (``ClusterPipeliner``). TLS (``rediss://``) uses redis-py's calls one
by one (``Pipeliner.supports``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeGuard, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.storage.functions import Library, LuaScript, is_missing, is_unsupported

RETRIES = 2  # sends of an unanswered call after the first, as make_client's Retry
BACKOFF_S = (0.01, 0.02)


# hiredis's stub types the argument as a 1-tuple; it takes a tuple of any length
_pack_command: Callable[[tuple[str | int | bytes, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]


def pack(args: tuple[str | int | bytes, ...]) -> bytes:
    """One command in RESP: an array of bulk strings (hiredis's packer, in C)."""
    return _pack_command(args)


def _elements(args: tuple[str | int | bytes, ...]) -> bytes:
    """The bulk strings of ``args`` without the array's header."""
    if not args:
        return b""
    packed = _pack_command(args)
    return packed[packed.index(b"\n") + 1 :]


class CallPacker:
    """FCALL and EVALSHA commands in RESP, with what repeats packed once.

    hiredis formats each argument's header with ``sprintf``: about 1,400 instructions an
    argument, 30,000 for an admission. The head of a call (command, script, keys) is the same
    for every call of one script on one org, and the tail of its arguments is drawn from a
    small set (flags, the process's settings), so both are packed once and kept; only the
    arguments in between, and the keys that are the call's own (``own``, the last ones: the
    key of the operation it is about), are packed per call. The bytes are those of ``pack``
    on the whole command."""

    LIMIT = 4096  # entries of each cache; cleared when full (orgs come and go)

    def __init__(self) -> None:
        self.heads: dict[tuple[tuple[str, str], tuple[str, ...]], bytes] = {}
        self.tails: dict[tuple[str | int, ...], bytes] = {}

    def __call__(
        self,
        command: tuple[str, str],
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
        tail: tuple[str | int, ...] = (),
        own: int = 0,
    ) -> bytes:
        """``command``: ("FCALL", function) or ("EVALSHA", digest)."""
        shared = keys[: len(keys) - own]
        head = self.heads.get((command, shared))
        if head is None:
            head = _elements((*command, len(keys), *shared))
            self._keep(self.heads, (command, shared), head)
        end = self.tails.get(tail) if tail else b""
        if end is None:
            end = _elements(tail)
            self._keep(self.tails, tail, end)
        n = 3 + len(keys) + len(args) + len(tail)
        middle = _elements((*keys[len(shared) :], *args)) if own else _elements(args)
        return b"*%d\r\n%b%b%b" % (n, head, middle, end)

    def _keep(self, cache: dict[Any, bytes], key: Any, value: bytes) -> None:
        if len(cache) >= self.LIMIT:
            cache.clear()
        cache[key] = value


class _Call:
    __slots__ = ("args", "fut", "keys", "packed", "reloaded", "script", "sent_at", "tries")

    def __init__(
        self,
        script: LuaScript | None,
        keys: Sequence[str],
        args: Sequence[str | int],
        packed: bytes,
        fut: asyncio.Future[Any] | None,
    ) -> None:
        self.script, self.keys, self.args, self.packed, self.fut = script, keys, args, packed, fut
        self.sent_at = 0.0
        self.tries = 0
        self.reloaded = False


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: Pipeliner) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        owner = self.owner
        while (reply := self.reader.gets()) is not False:
            owner._answer(self, reply)
        if owner.reloads:
            owner._send_reloads()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, exc)


class Pipeliner:
    """Script calls multiplexed on one connection. ``call`` is what ``Store`` awaits."""

    def __init__(self, client: aioredis.Redis, library: Library) -> None:
        self._setup(client.connection_pool.connection_kwargs, library)

    @classmethod
    def to_node(cls, host: str, port: int, kw: dict[str, Any], library: Library) -> Pipeliner:
        """One master of a Redis Cluster (``kw``: the cluster client's connection settings)."""
        self = cls.__new__(cls)
        self._setup({**kw, "host": host, "port": port, "path": None, "db": 0}, library)
        return self

    def _setup(self, kw: dict[str, Any], library: Library) -> None:
        # every script the store calls: a miss (Redis restarted or flushed) loads them all at
        # once, so that the next call of another script does not meet one too
        self.library = library
        self.host: str = kw.get("host", "localhost")
        self.port: int = int(kw.get("port", 6379))
        self.path: str | None = kw.get("path")
        self.db = int(kw.get("db") or 0)
        self.username: str | None = kw.get("username")
        self.password: str | None = kw.get("password")
        self.timeout: float = kw.get("socket_timeout") or 5.0
        self.connect_timeout: float = kw.get("socket_connect_timeout") or self.timeout
        self.proto: _Protocol | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.queue: list[_Call] = []  # waiting for the next write
        self.pending: deque[_Call] = deque()  # written, waiting for their replies in order
        self.flush_scheduled = False
        self.waiters: list[asyncio.Future[bool]] = []  # for sent()
        self.reloads: list[_Call] = []  # found their script missing, in the replies being read
        self.watchdog: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.writes = 0  # writes to Redis, for tests and benchmarks
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None  # bound at the first call
        self.packer = CallPacker()

    @staticmethod
    def supports(client: Any) -> TypeGuard[aioredis.Redis]:
        """A single-node client on TCP or a Unix socket (not TLS, not a cluster)."""
        if not isinstance(client, aioredis.Redis):
            return False
        cls = client.connection_pool.connection_class
        return cls in (aioredis.Connection, aioredis.UnixDomainSocketConnection)

    def call(
        self,
        script: LuaScript,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
        tail: tuple[str | int, ...] = (),
        own: int = 0,
    ) -> asyncio.Future[Any]:
        """Queue one call of ``script`` with ``args`` then ``tail`` (arguments from a small
        set of values, packed once: see CallPacker; ``own``: how many of the last keys are this
        call's own); the future gets its reply (or the error)."""
        loop = self._loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self.closed:
            fut.set_exception(RedisConnectionError("the script connection is closed"))
            return fut
        packed = self.packer(script.head, keys, args, tail, own)
        self.queue.append(_Call(script, keys, args + tail, packed, fut))
        if not self.pending and not self.flush_scheduled and self._writable() is not None:
            # nothing in flight: Redis is idle for this connection, and a batch would only
            # wait a loop turn; written at once (under load calls are in flight and batch)
            self._flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self._scheduled_flush)  # after every call of this turn is queued
        return fut

    def _loop(self) -> asyncio.AbstractEventLoop:
        # asyncio.get_running_loop() makes a getpid() system call on Python 3.11
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        return loop

    def sent(self) -> asyncio.Future[bool]:
        """Resolves when what is queued now has been written to Redis (True): already, when
        the connection was idle; else at the end of this loop turn with the rest of the
        batch. False: it could not be (the connection is down and the calls wait for a new
        one)."""
        fut: asyncio.Future[bool] = self._loop().create_future()
        if self.queue:
            self.waiters.append(fut)
        else:
            fut.set_result(True)
        return fut

    # -- writing -------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self.queue:
            return
        transport = self._writable()
        if transport is None:
            self._connect_soon()
            self._notify(False)
            return
        batch, self.queue = self.queue, []
        loop = self._loop()
        now = loop.time()
        for c in batch:
            c.sent_at = now
            c.tries += 1
        self.pending.extend(batch)
        transport.write(b"".join([c.packed for c in batch]))
        self.writes += 1
        if self.waiters:
            self._notify(True)
        if self.watchdog is None:
            self.watchdog = loop.call_at(now + self.timeout, self._watch)

    def _writable(self) -> asyncio.Transport | None:
        """The connection's transport when a write can go out now."""
        proto = self.proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            return None
        return proto.transport

    def _notify(self, written: bool) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(written)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush()

    def _connect_soon(self) -> None:
        if self.connecting is None:
            self.connecting = self._spawn(self._connect())

    async def _connect(self) -> None:
        delays = iter(BACKOFF_S)
        try:
            while True:
                try:
                    await self._open()
                    break
                except (OSError, TimeoutError, RedisError) as exc:
                    delay = next(delays, None)
                    if delay is None:
                        kind = RedisTimeoutError if isinstance(exc, TimeoutError) else None
                        err = (kind or RedisConnectionError)(f"cannot connect to Redis: {exc}")
                        self._fail(self.queue, err)
                        self.queue = []
                        self._notify(False)
                        return
                    await asyncio.sleep(delay)
        finally:
            self.connecting = None
        self._flush()

    async def _open(self) -> None:
        proto = _Protocol(self)
        try:
            await self._handshake(proto)
        except BaseException:
            self._drop(proto)
            raise
        self.proto = proto

    async def _handshake(self, proto: _Protocol) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            if self.path:
                await loop.create_unix_connection(lambda: proto, self.path)
            else:
                await loop.create_connection(lambda: proto, self.host, self.port)
        hello: list[_Call] = []
        if self.password:
            user = (self.username,) if self.username else ()
            hello.append(_Call(None, (), (), pack(("AUTH", *user, self.password)), None))
        if self.db:
            hello.append(_Call(None, (), (), pack(("SELECT", self.db)), None))
        if hello:
            # the handshake's replies come first; a failure closes the connection
            assert proto.transport is not None
            done: asyncio.Future[Any] = loop.create_future()
            hello[-1].fut = done
            for c in hello:
                c.sent_at = loop.time()  # the watchdog reads it
            self.pending.extend(hello)
            self.proto = proto
            proto.transport.write(b"".join(c.packed for c in hello))
            async with asyncio.timeout(self.connect_timeout):
                await done

    # -- reading -------------------------------------------------------------------------

    def _answer(self, proto: _Protocol, reply: Any) -> None:
        if proto is not self.proto or not self.pending:
            return  # a reply on a connection given up on: its calls were sent again
        c = self.pending.popleft()
        if isinstance(reply, hiredis.ReplyError):
            msg = str(reply)
            if c.script is None:  # a handshake command failed
                if c.fut is not None and not c.fut.done():
                    c.fut.set_exception(RedisConnectionError(f"Redis handshake failed: {msg}"))
                self._drop(proto)
                return
            if is_unsupported(msg):  # no FCALL on this server: EVALSHA from now on
                self.library.evalsha_only()
                self._spawn(self._load_and_run(c))
                return
            if is_missing(msg):
                if c.reloaded:
                    self._spawn(self._load_and_run(c))
                else:
                    c.reloaded = True
                    self.reloads.append(c)
                return
            reply = ResponseError(msg)
        if c.fut is not None and not c.fut.done():
            if isinstance(reply, Exception):
                c.fut.set_exception(reply)
            else:
                c.fut.set_result(reply)

    def _send_reloads(self) -> None:
        """Load the library (or every script), then the calls that found theirs missing, in
        their order, before the rest."""
        again = [_Call(None, (), (), pack(load), None) for load in self.library.load_commands()]
        again += self.reloads
        self.reloads = []
        self.queue[:0] = again
        self._flush()

    async def _load_and_run(self, c: _Call) -> None:
        assert c.script is not None and c.fut is not None
        try:
            reply = await c.script(keys=list(c.keys), args=list(c.args))
        except RedisError as exc:
            if not c.fut.done():
                c.fut.set_exception(exc)
            return
        if not c.fut.done():
            c.fut.set_result(reply)

    # -- failures ------------------------------------------------------------------------

    def _watch(self) -> None:
        """A reply older than the socket timeout: the connection is given up."""
        self.watchdog = None
        if not self.pending or self.proto is None:
            return
        loop = self._loop()
        due = self.pending[0].sent_at + self.timeout
        if loop.time() >= due:
            self._drop(self.proto, RedisTimeoutError("Timeout reading from Redis"))
        else:
            self.watchdog = loop.call_at(due, self._watch)

    def _drop(self, proto: _Protocol, exc: Exception | None = None) -> None:
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.abort()
        self._lost(proto, exc)

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        unanswered, self.pending = list(self.pending), deque()
        again: list[_Call] = []
        for c in unanswered:
            if c.script is None or c.fut is None or c.fut.done():
                continue
            if c.tries > RETRIES or self.closed:
                err = exc if isinstance(exc, RedisError) else None
                c.fut.set_exception(
                    err or RedisConnectionError(f"Redis connection lost: {exc or 'closed'}")
                )
            else:
                again.append(c)
        if again:
            self.queue[:0] = again  # first in line, in their order
            self._connect_soon()

    @staticmethod
    def _fail(calls: list[_Call], exc: Exception) -> None:
        for c in calls:
            if c.fut is not None and not c.fut.done():
                c.fut.set_exception(exc)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        self.closed = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        proto = self.proto
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._fail(self.queue, RedisConnectionError("the script connection is closed"))
        self.queue = []
        self._notify(False)


class ClusterPipeliner:
    """Auto-pipelining on a Redis Cluster: one ``Pipeliner`` per master, each call routed by
    the slot of its first key (every key of a call carries its org's hash tag: one slot).

    The masters are those of redis-py's map of the cluster. A call the map cannot route yet
    (before the client's first contact) or that a master refuses with MOVED or ASK (a slot
    moved, a failover) is made through redis-py, which follows redirections; a MOVED also
    refreshes the map, so the calls after it go to the new master. Every script is
    idempotent, and a redirected call did not run where it was refused."""

    def __init__(self, client: RedisCluster, library: Library) -> None:
        self.client = client
        self.library = library
        self.nodes: dict[str, Pipeliner] = {}
        self.last: Pipeliner | None = None  # where the latest call went (sent())
        self.redirected = 0  # calls refused with MOVED or ASK, for tests and benchmarks

    @staticmethod
    def supports(client: Any) -> TypeGuard[RedisCluster]:
        """A cluster client on plain TCP (not TLS)."""
        if not isinstance(client, RedisCluster):
            return False
        cls = client.get_connection_kwargs().get("connection_class", aioredis.Connection)
        return cls is aioredis.Connection

    @property
    def writes(self) -> int:
        return sum(p.writes for p in self.nodes.values())

    def _node(self, key: str) -> Pipeliner | None:
        try:
            node = self.client.get_node_from_key(key)
        except (RedisError, RedisClusterException):  # no map yet, or a slot not covered
            return None
        if node is None:
            return None
        p = self.nodes.get(node.name)
        if p is None:
            kw = dict(self.client.get_connection_kwargs())
            p = self.nodes[node.name] = Pipeliner.to_node(
                node.host, int(node.port), kw, self.library
            )
        return p

    def call(
        self,
        script: LuaScript,
        keys: tuple[str, ...],
        args: tuple[str | int, ...],
        tail: tuple[str | int, ...] = (),
        own: int = 0,
    ) -> Awaitable[Any]:
        p = self._node(keys[0])
        if p is None:
            self.last = None
            return script(keys=list(keys), args=[*args, *tail])
        self.last = p
        return self._routed(p.call(script, keys, args, tail, own), script, keys, (*args, *tail))

    async def _routed(
        self,
        fut: asyncio.Future[Any],
        script: LuaScript,
        keys: tuple[str, ...],
        argv: tuple[str | int, ...],
    ) -> Any:
        try:
            return await fut
        except ResponseError as exc:
            msg = str(exc)
            if not msg.startswith(("MOVED", "ASK")):
                raise
        self.redirected += 1
        if msg.startswith("MOVED"):
            await self.client.nodes_manager.initialize()
        return await script(keys=list(keys), args=list(argv))

    def sent(self) -> asyncio.Future[bool]:
        """As ``Pipeliner.sent`` for the latest call's master (the settlement just queued)."""
        if self.last is None:
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            fut.set_result(False)
            return fut
        return self.last.sent()

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.nodes.values()))
