"""fail_open: usage journaled to a local append-only file while Redis is unavailable, and
replayed into Redis, idempotently, when it is back — nothing lost, nothing doubled.

Each process appends to its own file (``journal-<pid>.jsonl``) and fsyncs every entry before
the request is answered. A replayer claims a whole file by renaming it (only one process can
win the rename), replays every entry through the same admit (forced: the request already
ran) and settle scripts, keyed by the request id, so a replay interrupted halfway and run
again charges nothing twice. A file is deleted only once every entry is in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from proxy.core.errors import StoreUnavailable
from proxy.obs.metrics import Metrics
from proxy.storage.store import StoreRefusal

log = logging.getLogger(__name__)

Replay = Callable[[dict[str, Any]], Awaitable[None]]


class Journal:
    def __init__(self, directory: str | Path, metrics: Metrics) -> None:
        self.dir = Path(directory)
        self.metrics = metrics
        self.path = self.dir / f"journal-{os.getpid()}.jsonl"
        self._lock = asyncio.Lock()
        self._fd: int | None = None

    def _append_sync(self, line: bytes) -> None:
        if self._fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, line)
        os.fsync(self._fd)

    async def append(self, entry: dict[str, Any]) -> None:
        """Write one entry durably (fsync'd) before returning."""
        line = orjson.dumps(entry) + b"\n"
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(None, self._append_sync, line)
        self.metrics.journal_entries.labels("written").inc()

    def _close_sync(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def pending(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(
            p for p in self.dir.iterdir() if p.suffix == ".jsonl" or p.name.endswith(".replaying")
        )

    async def replay(self, apply: Replay) -> int:
        """Replay every journal file in the folder; returns the entries applied.

        Stops (leaving what remains for the next try) as soon as Redis is unavailable.
        """
        applied = 0
        for path in self.pending():
            claimed = path
            if path.suffix == ".jsonl":
                async with self._lock:
                    if path == self.path:
                        self._close_sync()  # our own file: appends go to a new one
                    claimed = path.with_name(f"{path.name}.{os.getpid()}.replaying")
                    try:
                        os.rename(path, claimed)
                    except FileNotFoundError:
                        continue  # another process claimed it
            applied += await self._replay_file(claimed, apply)
        return applied

    async def _replay_file(self, path: Path, apply: Replay) -> int:
        applied = 0
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, path.read_bytes)
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                entry = orjson.loads(raw)
            except orjson.JSONDecodeError:
                # a torn last line from a crash mid-write: its request was never answered
                self.metrics.journal_entries.labels("torn").inc()
                continue
            try:
                await apply(entry)
            except StoreUnavailable:
                raise
            except StoreRefusal as exc:
                self.metrics.journal_entries.labels(f"dropped_{exc.code}").inc()
                log.error(
                    "journal entry refused on replay",
                    extra={"fields": {"entry": entry, "code": exc.code}},
                )
                continue
            applied += 1
            self.metrics.journal_entries.labels("replayed").inc()
        await loop.run_in_executor(None, path.unlink)
        return applied

    async def run(
        self, apply: Replay, ready: Callable[[], Awaitable[bool]], every_s: float = 1.0
    ) -> None:
        """The background replayer: whenever Redis answers and a journal waits, replay it."""
        while True:
            await asyncio.sleep(every_s)
            if not self.pending():
                continue
            try:
                if await ready():
                    n = await self.replay(apply)
                    if n:
                        log.info("journal replayed", extra={"fields": {"entries": n}})
            except StoreUnavailable:
                continue
            except Exception:
                log.exception("journal replay failed")

    def close(self) -> None:
        self._close_sync()
