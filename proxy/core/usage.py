"""Usage of a Messages API response, from a JSON body or incrementally from an SSE stream.

Pure. The stream's usage comes from ``message_start`` (input and cache fields) and the last
``message_delta`` (cumulative: its output count replaces the last one, and its input fields,
when present, replace those of ``message_start``). Text is counted as it streams so that a
stream cut before any ``message_delta`` can still be settled on an estimate (~4 characters a
token).

**An answer the API accepted (200) whose usage never arrived** — a stream or a JSON body cut
short by either side, or ended without its usage — is charged by one rule, ``estimate``:
what the API reported is kept; input it did not report comes from the request (its body's
bytes, ~4 a token), output it did not report from the text that came (~4 characters a
token). Such a charge is marked estimated. Nothing received, nothing charged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import orjson

from proxy.core.pricing import Usage, UsageError, usage_from_mapping
from proxy.core.sse import SSEParser

CHARS_PER_TOKEN = 4
# the strings of a (possibly cut) JSON answer that carry its output text: the last may be
# cut anywhere, so its closing quote is optional
_TEXT_VALUE = re.compile(rb'"(?:text|thinking)"\s*:\s*"((?:[^"\\]|\\.)*)')


def tokens_of_chars(chars: int) -> int:
    """Tokens in ``chars`` characters of text (or bytes of a request), rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate(
    reported: Mapping[str, object] | None,
    *,
    output_reported: bool,
    text_chars: int,
    prompt_bytes: int,
    max_output: int | None = None,
) -> Usage:
    """The one rule for an answer whose usage did not (all) arrive: the API's own counts
    where it reported them (``reported``: the usage fields seen; ``output_reported``: its
    final output count came), input from the request's size when it reported none, output
    from the text that came when it did not report its final count — at ~4 characters a
    token, and never more than the request's ``max_tokens`` (``max_output``): what the
    reservation bounded (text of ~6 characters a token would otherwise be counted 1.5×)."""
    try:
        usage = usage_from_mapping(reported or {})
    except UsageError:
        usage = Usage()
    if not reported or "input_tokens" not in reported:
        usage.input_tokens = tokens_of_chars(prompt_bytes)
    if not output_reported:
        output = max(usage.output_tokens, tokens_of_chars(text_chars))
        usage.output_tokens = output if max_output is None else min(output, max_output)
    return usage


def text_chars_in(body: bytes) -> int:
    """Characters of output text in a JSON answer, whole or cut (its text and thinking
    strings as they stand, escapes counted as written)."""
    return sum(len(m) for m in _TEXT_VALUE.findall(body))


def body_usage(
    body: bytes, prompt_bytes: int, max_output: int | None = None
) -> tuple[Usage | None, str | None, bool]:
    """(usage, model, estimated) of a non-streaming 200 answer, whole or cut: the usage it
    reports, else the estimate (``estimate``); None when nothing at all came."""
    usage, model = response_usage(body)
    if usage is not None:
        return usage, model, False
    if not body:
        return None, model, False
    text = text_chars_in(body)
    return (
        estimate(
            None,
            output_reported=False,
            text_chars=text,
            prompt_bytes=prompt_bytes,
            max_output=max_output,
        ),
        model,
        True,
    )


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

    __slots__ = (
        "_delta_seen",
        "_start",
        "_text_chars",
        "errored",
        "model",
        "parser",
        "received",
        "stopped",
    )

    def __init__(self) -> None:
        self.parser = SSEParser()
        self.received = 0  # bytes of the answer seen
        self._start: dict[str, object] = {}
        self._delta_seen = False
        self._text_chars = 0
        self.model: str | None = None
        self.errored = False
        self.stopped = False

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
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

    def usage(self, prompt_bytes: int = 0, max_output: int | None = None) -> Usage:
        """The usage seen so far, by the rule of ``estimate`` where the API's did not come:
        output from the text when no message_delta came (at most ``max_output``), input from
        the request's ``prompt_bytes`` when no message_start did."""
        return estimate(
            self._start,
            output_reported=self._delta_seen,
            text_chars=self._text_chars,
            prompt_bytes=prompt_bytes,
            max_output=max_output,
        )

    @property
    def estimated(self) -> bool:
        """Whether ``usage()`` is (in part) an estimate: the API's final output count or its
        input count did not come."""
        return not (self._delta_seen and "input_tokens" in self._start)

    @property
    def complete(self) -> bool:
        return self._delta_seen and self.stopped
