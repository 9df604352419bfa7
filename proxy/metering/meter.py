"""Admission and settlement around one request: what the proxy and the check API share.

Prices a request, admits it (round trip 1), and later settles its actual usage (round trip 2),
keeping the metrics. Settlement never raises: a failure is logged and counted, because the
answer has already reached the member by then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

from proxy.config import Config
from proxy.core.admission import Admission
from proxy.core.decision import Fit, refusal
from proxy.core.errors import StoreUnavailable
from proxy.core.pricing import PriceTable, Usage, cost_of
from proxy.metering.journal import Journal
from proxy.metering.payments import Payments
from proxy.obs.metrics import NANO, Metrics
from proxy.storage.store import Store, StoreRefusal
from proxy.upstream.upload import MAX_KNOWN_KEYS

log = logging.getLogger(__name__)

TOKEN_KINDS = (
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_input_tokens",
)


class Meter:
    def __init__(
        self, config: Config, store: Store, metrics: Metrics, payments: Payments, journal: Journal
    ) -> None:
        self.config = config
        self.prices: PriceTable = config.prices
        self.store = store
        self.metrics = metrics
        self.payments = payments
        self.journal = journal
        # the last upstream credential reference seen per org: a hint for fail_open only
        self.upstream_refs: dict[str, str] = {}
        # hashes of keys admitted here: their large bodies may start upstream as they arrive
        self.known_keys: set[str] = set()
        # settlements sent and not yet answered (each finishes in its own task)
        self.inflight: set[asyncio.Task[Any]] = set()

    def bounds(self, model: str, prompt_bytes: int, max_tokens: int) -> tuple[int, int]:
        """(maximum cost, estimated cost) of a request, nano-USD.

        Every token is at least one byte, so the body's size bounds the prompt's tokens; the
        estimate takes ~4 bytes a token.
        """
        return (
            self.prices.max_cost(model, prompt_bytes, max_tokens),
            self.prices.estimate(model, prompt_bytes // 4, max_tokens),
        )

    def fit(self, a: Admission, model: str, prompt_tokens: int, max_cost: int) -> Fit:
        """For a strict refusal: the largest max_tokens that the room left would hold."""
        family = self.prices.resolve(model).family
        rates = family.rates_for(prompt_tokens)
        room = a.nano("eu_remaining") - prompt_tokens * rates.max_prompt
        return Fit(max_cost, max(0, room // rates.output) if rates.output else 0)

    def remember_key(self, key_hash: str) -> None:
        if key_hash not in self.known_keys:
            if len(self.known_keys) >= MAX_KNOWN_KEYS:
                self.known_keys.clear()
            self.known_keys.add(key_hash)

    def count_upload(self, outcome: str) -> None:
        self.metrics.child(self.metrics.uploads, outcome).inc()

    def record_decision(self, a: Admission) -> None:
        m = self.metrics
        m.child(m.decisions, a["mode"] or "deny", a["reason"] or "none").inc()

    def refuse(self, a: Admission, model: str, prompt_tokens: int, max_cost: int) -> Exception:
        fit = self.fit(a, model, prompt_tokens, max_cost) if a["fits"] == "0" else None
        return refusal(a, fit)

    async def charge(
        self, org: str, request_id: str, model: str, usage: Usage, *, source: str, policy: str = ""
    ) -> dict[str, str]:
        """Settle a reservation on its actual usage; raises StoreRefusal/StoreUnavailable."""
        charged, _ = self._charge_soon(org, request_id, model, usage, source, policy)
        return await charged

    def _charge_soon(
        self, org: str, request_id: str, model: str, usage: Usage, source: str, policy: str
    ) -> tuple[Coroutine[Any, Any, dict[str, str]], Awaitable[bool]]:
        price = self.prices.resolve(model)
        detail = usage.as_dict()
        reply, sent = self.store.settle(
            org,
            request_id,
            cost=cost_of(price.family, usage),
            model=model,
            usage=detail,
            source=source,
        )
        family = price.family.name if price.known else "unknown"
        return self._charged(org, reply, family, detail, policy), sent

    async def _charged(
        self,
        org: str,
        reply: Awaitable[dict[str, str]],
        family: str,
        detail: dict[str, int],
        policy: str,
    ) -> dict[str, str]:
        result = await reply
        if result.get("replay") != "1":
            self._count(org, family, detail, result, policy)
        if result.get("reload_id"):
            await self.payments.reload_requested(
                org, result["reload_id"], int(result["reload_amount"])
            )
        return result

    def settle_start(
        self,
        org: str,
        request_id: str,
        model: str,
        usage: Usage,
        *,
        key_hash: str,
        policy: str = "",
    ) -> tuple[Coroutine[Any, Any, dict[str, str] | None], Awaitable[bool]]:
        """Settle after the answer: the settlement is queued now (written at once on an idle
        connection, else with this loop turn's batch); the coroutine finishes it and never
        raises. The second value resolves True once the settlement is written to Redis, so
        that the member may see the end of the answer: their next request is admitted after
        it. If Redis is unavailable the usage goes to the journal, replayed when Redis is
        back; a refusal is counted."""
        charged, sent = self._charge_soon(org, request_id, model, usage, "proxy", policy)
        return self._settled(charged, org, request_id, key_hash, model, usage), sent

    def track(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run the end of a settlement in a task of its own (a cancelled handler must not
        lose a charge), waited for at shutdown."""
        task = asyncio.ensure_future(work)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        return task

    async def _settled(
        self,
        charged: Awaitable[dict[str, str]],
        org: str,
        request_id: str,
        key_hash: str,
        model: str,
        usage: Usage,
    ) -> dict[str, str] | None:
        try:
            return await charged
        except StoreRefusal as exc:
            self.metrics.settle_failures.labels(exc.code).inc()
            log.error(
                "settle refused",
                extra={"fields": {"request_id": request_id, "org": org, "code": exc.code}},
            )
        except StoreUnavailable:
            self.metrics.settle_failures.labels("journaled").inc()
            await self.journal_usage(org, request_id, key_hash, model, usage)
        return None

    async def drain(self) -> None:
        """Wait for the settlements still under way (shutdown)."""
        while self.inflight:
            await asyncio.gather(*list(self.inflight), return_exceptions=True)

    async def journal_usage(
        self, org: str, request_id: str, key_hash: str, model: str, usage: Usage
    ) -> None:
        await self.journal.append(
            {
                "rid": request_id,
                "org": org,
                "key": key_hash,
                "model": model,
                "usage": usage.as_dict(),
            }
        )

    def _count(
        self, org: str, family: str, detail: dict[str, int], result: dict[str, str], policy: str
    ) -> None:
        m = self.metrics
        for kind in TOKEN_KINDS:
            if detail[kind]:
                m.child(m.tokens, family, kind).inc(detail[kind])
        cost = int(result["cost"])
        if result["mode"] == "extra_usage":
            m.spend(org, cost / NANO)
            over = int(result.get("overshoot") or 0)
            if over > 0:
                m.overshoot.labels(policy or self.config.policy.reservation).inc(over / NANO)
                m.overshoot_requests.labels(policy or self.config.policy.reservation).inc()
        else:
            m.child(m.included).inc(cost / NANO)

    async def replay(self, entry: dict[str, Any]) -> None:
        """Charge one journaled request (fail_open) into Redis: admitted by force, since it
        already ran, then settled; both idempotent by its request id."""
        org, rid = entry["org"], entry["rid"]
        await self.store.admit(
            org, rid, who="k", credential=entry["key"], max_cost=0, est_cost=0, force=True
        )
        await self.charge(
            org, rid, entry["model"], Usage.from_dict(entry["usage"]), source="journal"
        )

    async def release(self, org: str, request_id: str) -> None:
        try:
            await self.store.release(org, request_id)
        except StoreRefusal as exc:
            log.warning(
                "release refused", extra={"fields": {"request_id": request_id, "code": exc.code}}
            )
        except Exception:
            self.metrics.settle_failures.labels("release_failed").inc()
            log.exception("release failed", extra={"fields": {"request_id": request_id}})
