"""Auto-reload: asking the payment provider for a reload that settle.lua requested.

``auto-approve`` confirms at once (demo and tests); ``webhook`` POSTs the request to the
configured URL, retrying with backoff, and the provider confirms later through
``POST /admin/v1/orgs/{org}/extra-usage/reloads/{id}/confirm``. Failures are counted, never
silent; the reload stays pending, so no second one is requested meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from proxy.config import PaymentsConfig
from proxy.errors import StoreUnavailable
from proxy.metrics import Metrics
from proxy.money import format_usd
from proxy.store import Store, StoreRefusal

log = logging.getLogger(__name__)


class Payments:
    def __init__(
        self,
        cfg: PaymentsConfig,
        store: Store,
        metrics: Metrics,
        session: aiohttp.ClientSession | None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.session = session
        self.tasks: set[asyncio.Task[None]] = set()

    async def confirm(self, org: str, reload_id: str, actor: str) -> dict[str, str]:
        """The provider confirmed: credit the balance (idempotent by reload id)."""
        result = await self.store.confirm_reload(org, reload_id, actor)
        if result.get("replay") != "1":
            self.metrics.reloads.labels("confirmed").inc()
        return result

    async def reload_requested(self, org: str, reload_id: str, amount: int) -> None:
        self.metrics.reloads.labels("requested").inc()
        if self.cfg.provider == "auto-approve":
            try:
                await self.confirm(org, reload_id, "payments:auto-approve")
            except (StoreRefusal, StoreUnavailable):
                self.metrics.reloads.labels("failed").inc()
                log.exception(
                    "auto-approve of reload failed",
                    extra={"fields": {"org": org, "reload_id": reload_id}},
                )
            return
        task = asyncio.create_task(self._webhook(org, reload_id, amount))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _webhook(self, org: str, reload_id: str, amount: int) -> None:
        assert self.session is not None
        payload = {
            "type": "extra_usage.reload_requested",
            "org_id": org,
            "reload_id": reload_id,
            "amount": format_usd(amount),
            "confirm_path": f"/admin/v1/orgs/{org}/extra-usage/reloads/{reload_id}/confirm",
        }
        timeout = aiohttp.ClientTimeout(total=self.cfg.webhook_timeout_s)
        for attempt in range(self.cfg.webhook_attempts):
            try:
                async with self.session.post(
                    self.cfg.webhook_url, json=payload, timeout=timeout
                ) as resp:
                    if resp.status < 300:
                        self.metrics.reloads.labels("webhook_delivered").inc()
                        return
                    reason = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = repr(exc)
            self.metrics.reloads.labels("webhook_retry").inc()
            log.warning(
                "reload webhook failed",
                extra={
                    "fields": {
                        "org": org,
                        "reload_id": reload_id,
                        "attempt": attempt + 1,
                        "reason": reason,
                    }
                },
            )
            if attempt + 1 < self.cfg.webhook_attempts:
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        self.metrics.reloads.labels("webhook_failed").inc()

    async def close(self) -> None:
        """Let webhook deliveries in flight finish (bounded), then cancel the rest."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.cfg.webhook_timeout_s)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
