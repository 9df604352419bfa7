"""Structured logs: one JSON line per request (request id, org, member, mode, cost, latency)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

ACCESS = logging.getLogger("proxy.access")


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
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def access(**fields: Any) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("request", extra={"fields": fields})
