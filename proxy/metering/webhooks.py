"""Outgoing webhooks (reload requests, extra-usage request announcements): delivered in the
background with retries and backoff, every attempt counted, never silently dropped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from prometheus_client import Counter

log = logging.getLogger(__name__)


class Webhooks:
    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        counter: Counter,
        *,
        attempts: int = 3,
        timeout_s: float = 10.0,
    ) -> None:
        self.session = session
        self.counter = counter  # labelled by outcome
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.tasks: set[asyncio.Task[bool]] = set()

    def send(self, url: str, payload: dict[str, Any]) -> asyncio.Task[bool]:
        task = asyncio.create_task(self.deliver(url, payload))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def deliver(self, url: str, payload: dict[str, Any]) -> bool:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        for attempt in range(self.attempts):
            try:
                async with self.session.post(url, json=payload, timeout=timeout) as resp:
                    if resp.status < 300:
                        self.counter.labels("webhook_delivered").inc()
                        return True
                    reason = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = repr(exc)
            self.counter.labels("webhook_retry").inc()
            log.warning(
                "webhook delivery failed",
                extra={
                    "fields": {
                        "type": payload.get("type"),
                        "attempt": attempt + 1,
                        "reason": reason,
                    }
                },
            )
            if attempt + 1 < self.attempts:
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        self.counter.labels("webhook_failed").inc()
        return False

    async def close(self) -> None:
        """Let deliveries in flight finish (bounded), then cancel the rest."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.timeout_s)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
