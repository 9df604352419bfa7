"""Auto-reload: asking the payment provider for a reload that settle.lua requested.

``auto-approve`` confirms at once (demo and tests); ``webhook`` POSTs the request to the
configured URL, retrying with backoff, and the provider confirms later through
``POST /admin/v1/orgs/{org}/extra-usage/reloads/{id}/confirm``. Failures are counted, never
silent; the reload stays pending, so no second one is requested meanwhile.
"""

from __future__ import annotations

import logging

import aiohttp

from proxy.config import PaymentsConfig
from proxy.core.errors import StoreUnavailable
from proxy.core.money import format_usd
from proxy.metering.webhooks import Webhooks
from proxy.obs.metrics import Metrics
from proxy.storage.store import Store, StoreRefusal

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
        self.webhooks = Webhooks(
            session, metrics.reloads, attempts=cfg.webhook_attempts, timeout_s=cfg.webhook_timeout_s
        )

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
        self.webhooks.send(
            self.cfg.webhook_url,
            {
                "type": "extra_usage.reload_requested",
                "org_id": org,
                "reload_id": reload_id,
                "amount": format_usd(amount),
                "confirm_path": f"/admin/v1/orgs/{org}/extra-usage/reloads/{reload_id}/confirm",
            },
        )

    async def close(self) -> None:
        await self.webhooks.close()
