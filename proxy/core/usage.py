"""Usage of a Messages API response, from a JSON body or incrementally from an SSE stream.

Pure. The stream's usage comes from ``message_start`` (input and cache fields) and the last
``message_delta`` (cumulative: its output count replaces the last one, and its input fields,
when present, replace those of ``message_start``). Text is counted as it streams so that a
stream cut before any ``message_delta`` can still be settled on an estimate (~4 characters a
token).
"""

from __future__ import annotations

import orjson

from proxy.core.pricing import Usage, UsageError, usage_from_mapping
from proxy.core.sse import SSEParser

CHARS_PER_TOKEN = 4


def response_usage(body: bytes) -> tuple[Usage | None, str | None]:
    """(usage, model) of a non-streaming response body; None where it has none."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if type(doc) is not dict:
        return None, None
    raw_model = doc.get("model")
    model = raw_model if type(raw_model) is str else None
    usage = doc.get("usage")
    if type(usage) is not dict:
        return None, model
    try:
        return usage_from_mapping(usage), model
    except UsageError:
        return None, model


class StreamUsage:
    """Feed it the raw bytes of an SSE response as they arrive; read ``usage()`` at any time."""

    __slots__ = ("_delta_seen", "_start", "_text_chars", "errored", "model", "parser", "stopped")

    def __init__(self) -> None:
        self.parser = SSEParser()
        self._start: dict[str, object] = {}
        self._delta_seen = False
        self._text_chars = 0
        self.model: str | None = None
        self.errored = False
        self.stopped = False

    def feed(self, chunk: bytes) -> None:
        for event, data in self.parser.feed(chunk):
            if event == "content_block_delta":
                self._count_text(data)
            elif event == "message_start":
                self._on_start(data)
            elif event == "message_delta":
                self._on_delta(data)
            elif event == "message_stop":
                self.stopped = True
            elif event == "error":
                self.errored = True
            # ping and unknown events carry no usage

    def _load(self, data: bytes) -> dict[str, object] | None:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None

    def _on_start(self, data: bytes) -> None:
        doc = self._load(data)
        msg = doc.get("message") if doc else None
        if not isinstance(msg, dict):
            return
        model = msg.get("model")
        if isinstance(model, str):
            self.model = model
        usage = msg.get("usage")
        if isinstance(usage, dict):
            self._start = dict(usage)

    def _on_delta(self, data: bytes) -> None:
        doc = self._load(data)
        usage = doc.get("usage") if doc else None
        if not isinstance(usage, dict):
            return
        self._delta_seen = True
        for key, value in usage.items():
            if value is not None:
                self._start[key] = value

    def _count_text(self, data: bytes) -> None:
        doc = self._load(data)
        delta = doc.get("delta") if doc else None
        if not isinstance(delta, dict):
            return
        for key in ("text", "thinking", "partial_json"):
            value = delta.get(key)
            if isinstance(value, str):
                self._text_chars += len(value)

    def usage(self) -> Usage:
        """The usage seen so far; output estimated from the text when no message_delta came."""
        try:
            usage = usage_from_mapping(self._start)
        except UsageError:
            usage = Usage()
        if not self._delta_seen:
            estimate = -(-self._text_chars // CHARS_PER_TOKEN)
            usage.output_tokens = max(usage.output_tokens, estimate)
        return usage

    @property
    def complete(self) -> bool:
        return self._delta_seen and self.stopped
