"""Structured logs: JSON lines on stderr. One line per request (request id, org, member, mode,
cost, status, latency) from ``AccessLog``; everything else through ``logging``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import orjson

# U+2028 and U+2029, which orjson leaves raw: some log viewers (and JavaScript) read them as
# line breaks, so that a value could seem to start a log line of its own
_SEPARATORS = ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029")


def json_line(doc: dict[str, Any]) -> bytes:
    """One log line: JSON with every line break escaped (U+2028 and U+2029 too)."""
    line = orjson.dumps(doc, default=str)
    if b"\xe2\x80" in line:
        for raw, escaped in _SEPARATORS:
            line = line.replace(raw, escaped)
    return line


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json_line(doc).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Throttled:
    """A warning at most once per ``every_s`` per key: an outage of Redis or of the API
    fails every request, and one line with the cause (and how many were suppressed) says
    as much as a thousand."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -self.every_s) < self.every_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return
        self.last[key] = now
        suppressed = self.suppressed.pop(key, 0)
        self.logger.warning(message, extra={"fields": {**fields, "suppressed": suppressed}})


class AccessLog:
    """The per-request log line, written in batches: the lines of one 50 ms slice go out in
    one write instead of one system call and one LogRecord each (flushed on shutdown too)."""

    def __init__(self, fd: int | None = 2, every_s: float = 0.05) -> None:
        self.fd = fd
        self.every_s = every_s
        self.pid = os.getpid()
        self.lines: list[bytes] = []
        self._scheduled = False

    def request(
        self,
        *,
        request_id: str,
        org: str | None,
        member: str | None,
        mode: str,
        status: int,
        cost: str | None,
        started: float,
        **extra: Any,
    ) -> None:
        """The line of one proxied request, whatever its outcome (``started``: its
        ``time.perf_counter()`` on arrival)."""
        if self.fd is None:
            return
        self._add(
            {
                "ts": round(time.time(), 3),
                "level": "info",
                "logger": "proxy.access",
                "pid": self.pid,
                "msg": "request",
                "request_id": request_id,
                "org": org,
                "member": member,
                "mode": mode,
                "status": status,
                "cost": cost,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                **extra,
            }
        )

    def _add(self, doc: dict[str, Any]) -> None:
        self.lines.append(json_line(doc) + b"\n")
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.every_s, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self.lines and self.fd is not None:
            data, self.lines = b"".join(self.lines), []
            try:
                os.write(self.fd, data)
            except OSError:
                logging.getLogger(__name__).exception("access log write failed")
