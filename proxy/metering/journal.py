"""The worker's local journal: what Redis has not been told yet, kept so that nothing the API
served is lost — not in a Redis outage (fail_open, or a settlement that failed under
fail_closed), not when the worker is killed (``kill -9``) with requests in flight.

One file per process (``journal-<pid>-<random>.jsonl``), held under an exclusive ``flock``
for the process's whole life: the lock is how every other process knows its owner is alive.
A file is created under a temporary name, locked, then renamed into place, so no other
process ever sees it unlocked while its owner lives. Lines, by kind (``k``):

- ``j`` — a request's usage to charge (Redis was unavailable): written and ``fsync``'d
  before the request is answered;
- ``a`` — a request sent upstream (org, key, model, the request's size), written with its
  first ``u``: one of which nothing came needs no record (its reservation is reclaimed
  after its TTL, and nothing is charged);
- ``u`` — what the API has reported of it so far (the usage by the rule of
  ``proxy.core.usage``, whether it is estimated, how many bytes came);
- ``d`` — it is done: its settlement written to Redis, released, or journaled as ``j``
  (only for a request whose ``a`` was written).

``a``/``u``/``d`` lines are a group commit: every request touched in one event-loop turn is
written at the end of that turn with one ``write`` (no ``fsync``: they guard against the
process dying, which loses nothing the kernel already has; a machine crash may lose the last
of them — docs/known-limits.md). A chunk is metered, its request marked, and the chunk
written to the member in the same turn, so what a killed worker's member was sent is on
disk but for the chunks of the turn it died in. A request whose answer comes and whose
settlement goes out within one turn (most short JSON answers) writes nothing at all.

**Replay.** A file whose lock can be taken belongs to a dead process (or was rotated away by
its live owner, who holds the lock while it replays it). The replayer that takes the lock
replays it: every ``j`` through the forced admission and settlement; every request with an
``a`` and no ``d`` — in flight when its worker died — charged on its last ``u`` (nothing
came: released). Both are idempotent by request id, so a replay cut short and run again, or
racing the owner's own settlement, charges nothing twice. The file is deleted once every
line is in Redis. Its own file a live process rotates (a new file, its requests in flight
carried over) when the file has ``j`` lines to replay or has grown past ``ROTATE_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from proxy.core.errors import StoreUnavailable
from proxy.core.pricing import Usage
from proxy.core.usage import StreamUsage, body_usage
from proxy.obs.metrics import Metrics
from proxy.storage.store import StoreRefusal

log = logging.getLogger(__name__)

Replay = Callable[[dict[str, Any]], Awaitable[None]]
ROTATE_BYTES = 8 << 20  # a file past this is rotated (its requests in flight carried over)
JOURNAL = "journal-"
SUFFIX = ".jsonl"
# a file an earlier version was replaying when it stopped
# ("journal-<pid>.jsonl.<pid>.replaying"): usage lines only, replayed like any file whose
# owner is gone
LEGACY = ".replaying"


class InFlight:
    """A request sent upstream and not settled yet, as the journal knows it."""

    __slots__ = (
        "body",
        "est",
        "key",
        "lease",
        "model",
        "mt",
        "org",
        "pb",
        "rid",
        "seen",
        "since",
        "usage",
        "written",
    )

    def __init__(
        self,
        rid: str,
        org: str,
        key: str,
        model: str,
        prompt_bytes: int,
        now: float,
        max_tokens: int | None = None,
    ) -> None:
        self.rid, self.org, self.key, self.model, self.pb = rid, org, key, model, prompt_bytes
        self.mt = max_tokens  # the most output an estimate of it may count
        self.lease = False  # it holds a reservation, renewed while it runs (Meter.renew)
        self.since = now  # sent, or its lease last renewed (the loop's clock)
        self.written = False  # its ``a`` line is in the file
        self.seen: StreamUsage | None = None  # a stream's usage, read at the turn's end
        self.usage: Usage | None = None  # a JSON answer's, once read
        self.body: list[bytes] | None = None  # a JSON answer's pieces, while they come
        self.est = False

    def begun(self) -> bytes:
        return (
            orjson.dumps(
                {
                    "k": "a",
                    "t": int(time.time()),
                    "rid": self.rid,
                    "org": self.org,
                    "key": self.key,
                    "model": self.model,
                    "pb": self.pb,
                }
            )
            + b"\n"
        )

    def progress(self) -> bytes | None:
        """Its ``u`` line: what came so far (None: nothing yet)."""
        if self.seen is not None:
            if not self.seen.received:
                return None
            usage = self.seen.usage(self.pb, self.mt)
            est, model = self.seen.estimated, self.seen.model
        elif self.usage is not None:
            usage, est, model = self.usage, self.est, None
        elif self.body:
            cut, model, est = body_usage(b"".join(self.body), self.pb, self.mt)
            if cut is None:
                return None
            usage = cut
        else:
            return None
        line: dict[str, Any] = {"k": "u", "rid": self.rid, "usage": usage.as_dict()}
        if est:
            line["est"] = 1
        if model:
            line["model"] = model
        return orjson.dumps(line) + b"\n"


def _create(directory: Path) -> tuple[int, Path]:
    """A new journal file of this process, locked before any other process can see it."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{JOURNAL}{os.getpid()}-{secrets.token_hex(4)}"
    tmp = directory / f"{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = directory / f"{name}{SUFFIX}"
    os.rename(tmp, path)
    return fd, path


def _claim(path: Path) -> int | None:
    """The lock of a journal file whose owner is gone (None: it lives, or the file went)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # the file may have been replayed and deleted between the open and the lock
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd


def parse(data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(usage to charge, requests in flight to recover, torn lines) of a journal's bytes."""
    charges: list[dict[str, Any]] = []
    flying: dict[str, dict[str, Any]] = {}
    torn = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            torn += 1  # a crash mid-write: that request was not answered
            continue
        kind = line.get("k", "j")  # a file written before kinds has usage lines only
        if kind == "j":
            charges.append(line)
            flying.pop(line["rid"], None)
        elif kind == "a":
            flying[line["rid"]] = line
        elif kind == "u":
            known = flying.get(line["rid"])
            if known is not None:
                known["usage"] = line["usage"]
                known["est"] = line.get("est", 0)
                known["model"] = line.get("model") or known["model"]
        elif kind == "d":
            flying.pop(line["rid"], None)
    return charges, list(flying.values()), torn


class Journal:
    def __init__(self, directory: str | Path, metrics: Metrics, in_flight: bool = True) -> None:
        self.dir = Path(directory)
        self.metrics = metrics
        self.in_flight = in_flight  # policy.journal_in_flight: record requests in flight
        self._lock = asyncio.Lock()
        self._fd: int | None = None
        self.path: Path | None = None
        self.size = 0
        self.to_replay = 0  # ``j`` lines in this process's own file
        self.active: dict[str, InFlight] = {}
        self._dirty: dict[str, InFlight] = {}
        self._lines: list[bytes] = []
        self._flush_due = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- writing -------------------------------------------------------------------------

    def _open(self) -> int:
        if self._fd is None:
            self._fd, self.path = _create(self.dir)
            self.size = 0
        return self._fd

    def _write(self, data: bytes) -> None:
        os.write(self._open(), data)
        self.size += len(data)

    def _append_sync(self, line: bytes) -> None:
        fd = self._open()
        os.write(fd, line)
        os.fsync(fd)
        self.size += len(line)

    async def append(self, entry: dict[str, Any]) -> None:
        """Write one usage entry (``j``) durably (fsync'd) before returning."""
        line = orjson.dumps(entry) + b"\n"
        async with self._lock:
            self.flush()  # what came before it, first
            await asyncio.get_running_loop().run_in_executor(None, self._append_sync, line)
            self.to_replay += 1
        self.metrics.journal_entries.labels("written").inc()

    def begin(
        self,
        rid: str,
        org: str,
        key: str,
        model: str,
        prompt_bytes: int,
        max_tokens: int | None = None,
    ) -> InFlight:
        """A request goes upstream: known, and written with what first comes of it."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        f = self.active[rid] = InFlight(rid, org, key, model, prompt_bytes, loop.time(), max_tokens)
        return f

    def touched(self, f: InFlight) -> None:
        """More of its answer came: its progress is written at the end of this turn."""
        if not self.in_flight:
            return
        self._dirty[f.rid] = f
        if not self._flush_due:
            self._due()

    def end(self, rid: str) -> None:
        """Its settlement is out, or it was released or journaled: nothing to recover any
        more (idempotent)."""
        f = self.active.pop(rid, None)
        if f is not None:
            self._dirty.pop(rid, None)
            if f.written:
                self._lines.append(b'{"k":"d","rid":' + orjson.dumps(rid) + b"}\n")
                self._due()

    def _due(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """The group commit: this turn's lines, in one write."""
        self._flush_due = False
        lines = self._lines
        if self._dirty:
            for f in self._dirty.values():
                line = f.progress()
                if line is not None:
                    if not f.written:
                        f.written = True
                        lines.append(f.begun())
                    lines.append(line)
            self._dirty.clear()
        if not lines:
            return
        self._lines = []
        try:
            self._write(b"".join(lines))
        except OSError:
            self.metrics.journal_entries.labels("write_failed").inc()
            log.exception("journal write failed")

    # -- replay --------------------------------------------------------------------------

    def pending(self) -> list[Path]:
        """Journal files to look at: other processes' (replayed once their owner is gone),
        and this process's own when it has usage to replay."""
        if not self.dir.is_dir():
            return []
        return sorted(
            p
            for p in self.dir.iterdir()
            if p.name.startswith(JOURNAL)
            and p.suffix in (SUFFIX, LEGACY)
            and (p != self.path or self.to_replay)
        )

    def _rotate(self) -> tuple[int, Path] | None:
        """Start a new file with the requests in flight carried over; the old one (still
        locked, its fd returned) is replayed by the caller, skipping those requests."""
        old_fd, old_path = self._fd, self.path
        if old_fd is None or old_path is None:
            return None
        self.flush()
        self._fd, self.path = _create(self.dir)
        self.size, self.to_replay = 0, 0
        carried = [f.begun() + (f.progress() or b"") for f in self.active.values() if f.written]
        if carried:
            self._write(b"".join(carried))
        return old_fd, old_path

    async def replay(self, apply: Replay, recover: Replay | None = None) -> int:
        """Replay every journal whose owner is gone, and this process's own usage lines;
        returns the entries applied. Stops (leaving what remains for the next try) as soon as
        Redis is unavailable."""
        applied = 0
        for path in self.pending():
            skip: set[str] = set()
            if path == self.path:
                async with self._lock:
                    rotated = self._rotate()
                    skip = set(self.active)  # carried over: they are still running here
                if rotated is None:
                    continue
                fd, path = rotated
            else:
                claimed = _claim(path)
                if claimed is None:
                    continue  # its owner lives, or another process replays it
                fd = claimed
            try:
                applied += await self._replay_file(path, apply, recover, skip)
            finally:
                os.close(fd)  # the lock goes with it
        return applied

    async def _replay_file(
        self, path: Path, apply: Replay, recover: Replay | None, skip: set[str]
    ) -> int:
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, path.read_bytes)
        charges, flying, torn = parse(data)
        if torn:
            self.metrics.journal_entries.labels("torn").inc(torn)
        work = [(apply, e, "replayed") for e in charges]
        if recover is not None:
            work += [(recover, e, "recovered") for e in flying if e["rid"] not in skip]
        applied = 0
        for fn, entry, outcome in work:
            try:
                await fn(entry)
            except StoreUnavailable:
                raise
            except StoreRefusal as exc:
                self.metrics.journal_entries.labels(f"dropped_{exc.code}").inc()
                log.error(
                    "journal entry refused on replay",
                    extra={"fields": {"rid": entry.get("rid"), "code": exc.code}},
                )
                continue
            applied += 1
            self.metrics.journal_entries.labels(outcome).inc()
        await loop.run_in_executor(None, path.unlink)
        return applied

    async def run(
        self,
        apply: Replay,
        ready: Callable[[], Awaitable[bool]],
        every_s: float = 1.0,
        recover: Replay | None = None,
    ) -> None:
        """The background replayer: whenever Redis answers and a journal waits, replay it;
        its own file is rotated when it grows past ``ROTATE_BYTES``."""
        while True:
            await asyncio.sleep(every_s)
            if self.size > ROTATE_BYTES and not self.to_replay:
                async with self._lock:
                    rotated = self._rotate()
                if rotated is not None:  # nothing in it to replay: its lines are all done
                    os.unlink(rotated[1])
                    os.close(rotated[0])
            if not self.pending():
                continue
            try:
                if await ready():
                    n = await self.replay(apply, recover)
                    if n:
                        log.info("journal replayed", extra={"fields": {"entries": n}})
            except StoreUnavailable:
                continue
            except Exception:
                log.exception("journal replay failed")

    def open(self) -> None:
        """Create and lock this process's file now (at start: it is where requests in
        flight are recorded)."""
        self._open()

    def close(self) -> None:
        """At shutdown: every request is done, so the file holds nothing to recover but
        usage still to replay; without any, it is deleted."""
        self.flush()
        if self._fd is not None:
            if self.path is not None and not self.to_replay and not self.active:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
