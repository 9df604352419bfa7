"""Incremental Server-Sent Events framing. Pure: bytes in, (event, data) pairs out.

Chunks from the network split events anywhere — inside a field name, between ``\\r`` and
``\\n``, inside a multi-byte character — and one event can be larger than any line limit, so
the parser keeps its partial line in a buffer of its own and never assumes a boundary.
"""

from __future__ import annotations


class SSEParser:
    __slots__ = ("_buf", "_data", "_event", "_pending_cr")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._event = b""
        self._data: list[bytes] = []
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Feed bytes; return the events completed by them as (event type, data)."""
        if not chunk:
            return []
        if self._pending_cr:
            # a CR ended the last chunk: a LF starting this one belongs to the same line end
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf
        buf += chunk
        events: list[tuple[str, bytes]] = []
        start = 0
        n = len(buf)
        while start < n:
            nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, nl if nl >= 0 else n)
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt < n and buf[nxt] == 10:
                    nxt += 1
                elif nxt == n:
                    self._pending_cr = True
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                break
            self._line(bytes(buf[start:end]), events)
            start = nxt
        del buf[:start]
        return events

    def _line(self, line: bytes, events: list[tuple[str, bytes]]) -> None:
        if not line:
            if self._data or self._event:
                events.append(
                    (self._event.decode("utf-8", "replace") or "message", b"\n".join(self._data))
                )
            self._event = b""
            self._data = []
            return
        if line[:1] == b":":
            return  # comment
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
