"""Admission and settlement around one request: what the proxy and the check API share.

Prices a request, admits it (round trip 1), and later settles its actual usage (round trip 2),
keeping the metrics. The fail_open / fail_closed policy for a Redis outage is decided here
(``admit_request``, ``let_through``). The settlement path is three calls deep: ``settle``
sends it (``Store.settle``) and hands the reply to ``_finish``, which accounts for it
(``_account``: metrics, auto-reload) and never raises — the answer has already reached the
member by then; ``charge`` is the same accounting, awaited, for callers that answer with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from proxy.config import Config
from proxy.core.admission import Admission
from proxy.core.decision import Fit, refusal
from proxy.core.errors import Refused, StoreUnavailable
from proxy.core.pricing import Price, PriceTable, Usage, cost_of
from proxy.core.tools import NO_TOOLS, ToolBounds
from proxy.core.vocabulary import Decision, Mode, Refusal
from proxy.metering.journal import Journal
from proxy.metering.payments import Payments
from proxy.obs.metrics import NANO, Metrics
from proxy.storage.scripts import Reply
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
KEY_FRESH_S = 30.0  # how long a key checked in Redis counts as known to this process
# a journal entry older than replay_window_s less this is treated as past the window (the
# window runs on Redis's clock from the settlement; the entry's time is this host's)
REPLAY_MARGIN_S = 60
FAIL_CLOSED_MESSAGE = (
    "the usage store (Redis) is unavailable and this proxy fails closed: requests are "
    "refused until it is back"
)
FAIL_OPEN_UNKNOWN_MESSAGE = (
    "the usage store (Redis) is unavailable, and this proxy lets through only keys it checked "
    "recently: try again when it is back"
)
# what the caller does once a settlement is finished: its result, None when it was journaled
# or refused
Settled = Callable[[Reply | None], None]


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
        # key hash -> when this process last admitted it (monotonic s): a request of a key
        # admitted within KEY_FRESH_S has its body read at once; any other key is checked
        # first (whois), so that no body of an unknown key is read
        self.known_keys: dict[str, float] = {}
        # settlements sent and not yet answered (each finishes in its own task)
        self.inflight: set[asyncio.Task[Any]] = set()
        # whether the durable ledger (PostgreSQL) holds an operation: asked for a journal
        # replay too old for Redis to recognise (set by the app; None: nothing to ask)
        self.ledger_has: Callable[[str, str], Awaitable[bool]] | None = None

    # -- admission -----------------------------------------------------------------------

    def bounds(
        self, model: str, prompt_bytes: int, max_tokens: int, tools: ToolBounds = NO_TOOLS
    ) -> tuple[int, int]:
        """(maximum cost, estimated cost) of a request, nano-USD.

        Every token is at least one byte, so the body's size bounds the prompt's tokens; the
        estimate takes ~4 bytes a token. Web searches are inside both, at the model's price;
        what web fetch may bring is input inside the maximum (strict's bound), and counted
        as overshoot under estimate, as any input the body does not show.
        """
        searches = tools.searches * self.prices.resolve(model).family.web_search
        return (
            self.prices.max_cost(model, prompt_bytes + tools.fetched_tokens, max_tokens) + searches,
            self.prices.estimate(model, prompt_bytes // 4, max_tokens) + searches,
        )

    async def admit_request(
        self,
        org: str,
        request_id: str,
        key_hash: str,
        *,
        max_cost: int,
        est_cost: int,
        accept_extra: bool,
        unbounded: bool = False,
    ) -> Admission | None:
        """Admit a proxy request (its lean answer); None when Redis is unavailable and the
        proxy fails open (the request then runs unmetered and its usage is journaled)."""
        try:
            return await self.store.admit(
                org,
                request_id,
                who="k",
                credential=key_hash,
                max_cost=max_cost,
                est_cost=est_cost,
                accept_extra=accept_extra,
                lean=True,
                unbounded=unbounded,
            )
        except StoreUnavailable:
            self.let_through(key_hash)
            return None

    def let_through(self, key_hash: str) -> None:
        """Redis is unavailable: raise the fail_closed 503, or count a fail_open pass — for a
        key this process checked in Redis within ``policy.fail_open_known_s`` only (a key it
        cannot vouch for, made up or revoked long ago, gets the 503 as under fail_closed)."""
        policy = self.config.policy
        if policy.fail_mode != "open":
            raise StoreUnavailable(FAIL_CLOSED_MESSAGE) from None
        seen = self.known_keys.get(key_hash)
        if seen is None or time.monotonic() - seen > policy.fail_open_known_s:
            self.metrics.fail_open_refused.inc()
            raise StoreUnavailable(FAIL_OPEN_UNKNOWN_MESSAGE) from None
        self.metrics.fail_open.inc()

    def admitted(self, org: str, a: Admission, key_hash: str) -> None:
        """Remember what an allowed admission tells about the org and the key."""
        self.record_decision(a)
        self.upstream_refs[org] = a["upstream"]
        self.known(key_hash)

    def known(self, key_hash: str) -> None:
        """The key was checked in Redis just now (admitted, or whois)."""
        keys = self.known_keys
        if len(keys) >= MAX_KNOWN_KEYS and key_hash not in keys:
            keys.clear()
        keys[key_hash] = time.monotonic()

    def fresh(self, key_hash: str) -> bool:
        """Whether the key was checked in Redis within the last ``KEY_FRESH_S``."""
        seen = self.known_keys.get(key_hash)
        return seen is not None and time.monotonic() - seen < KEY_FRESH_S

    def fit(self, a: Admission, model: str, prompt_tokens: int, max_cost: int) -> Fit:
        """For a strict refusal: the largest max_tokens that the room left would hold."""
        family = self.prices.resolve(model).family
        rates = family.rates_for(prompt_tokens)
        room = a.nano("eu_remaining") - prompt_tokens * rates.max_prompt
        return Fit(max_cost, max(0, room // rates.output) if rates.output else 0)

    def count_upload(self, outcome: str) -> None:
        self.metrics.child(self.metrics.uploads, outcome).inc()

    def record_decision(self, a: Admission) -> None:
        m = self.metrics
        m.child(m.decisions, a["mode"] or Decision.DENY, a["reason"] or "none").inc()

    def refuse(
        self, a: Admission, model: str, prompt_tokens: int, max_cost: int, page: str = ""
    ) -> Refused:
        fit = self.fit(a, model, prompt_tokens, max_cost) if a["fits"] == "0" else None
        return refusal(a, fit, page)

    # -- settlement ----------------------------------------------------------------------

    def settle(
        self,
        org: str,
        request_id: str,
        model: str,
        usage: Usage,
        *,
        key_hash: str,
        policy: str,
        then: Settled,
        estimated: bool = False,
    ) -> tuple[asyncio.Task[Reply | None], Awaitable[bool]]:
        """Settle after the answer: the settlement is queued now (written at once on an idle
        connection, else with this loop turn's batch) and finished in a task of its own,
        which never raises and calls ``then`` with the result. The second value resolves
        True once the settlement is written to Redis, so that the member may see the end of
        the answer: their next request is admitted after it. If Redis is unavailable the
        usage goes to the journal, replayed when Redis is back; a refusal is counted.
        ``estimated``: the usage is the estimate rule's (``proxy.core.usage``)."""
        price, reply, sent = self._send(org, request_id, model, usage, "proxy", estimated)
        done = self._finish(
            reply, org, request_id, key_hash, model, usage, price, policy, then, estimated
        )
        return self.track(done), sent

    async def charge(
        self,
        org: str,
        request_id: str,
        model: str,
        usage: Usage,
        *,
        source: str,
        estimated: bool = False,
    ) -> Reply:
        """Settle a reservation on its actual usage and account for it; raises StoreRefusal /
        StoreUnavailable (the check API, journal replays)."""
        price, reply, _ = self._send(org, request_id, model, usage, source, estimated)
        return await self._account(org, await reply, price, usage, "")

    def journaled(
        self,
        org: str,
        request_id: str,
        key_hash: str,
        model: str,
        usage: Usage,
        then: Settled,
        *,
        estimated: bool = False,
    ) -> asyncio.Task[None]:
        """fail_open: the usage of a request that ran unmetered, written to the journal (in a
        task of its own: durably, before the process may stop)."""

        async def write() -> None:
            await self.journal_usage(org, request_id, key_hash, model, usage, estimated)
            then(None)

        return self.track(write())

    def _send(
        self, org: str, request_id: str, model: str, usage: Usage, source: str, estimated: bool
    ) -> tuple[Price, Coroutine[Any, Any, Reply], Awaitable[bool]]:
        price = self.prices.resolve(model)
        reply, sent = self.store.settle(
            org,
            request_id,
            cost=cost_of(price.family, usage),
            model=model,
            usage=usage.as_dict(),
            source=source,
            estimated=estimated,
        )
        return price, reply, sent

    async def _finish(
        self,
        reply: Awaitable[Reply],
        org: str,
        request_id: str,
        key_hash: str,
        model: str,
        usage: Usage,
        price: Price,
        policy: str,
        then: Settled,
        estimated: bool,
    ) -> Reply | None:
        result: Reply | None = None
        try:
            result = await self._account(org, await reply, price, usage, policy)
        except StoreRefusal as exc:
            self.metrics.settle_failures.labels(exc.code).inc()
            if exc.code == Refusal.UNKNOWN_RESERVATION:
                # Redis no longer has its reservation (it came back with less than it had
                # acknowledged): the API served it all the same, so it is charged all the
                # same — admitted by force and settled, once, by its request id
                result = await self._recharge(org, request_id, key_hash, model, usage, estimated)
            else:
                log.error(
                    "settle refused",
                    extra={"fields": {"request_id": request_id, "org": org, "code": exc.code}},
                )
        except StoreUnavailable:
            self.metrics.settle_failures.labels("journaled").inc()
            await self.journal_usage(org, request_id, key_hash, model, usage, estimated)
        then(result)
        return result

    async def _recharge(
        self, org: str, request_id: str, key_hash: str, model: str, usage: Usage, estimated: bool
    ) -> Reply | None:
        """Charge a request whose reservation Redis lost, as a journal replay would; journaled
        when Redis is away again (the replay charges it then)."""
        entry = {"org": org, "rid": request_id, "key": key_hash, "model": model}
        if estimated:
            entry["est"] = "1"
        try:
            result = await self._charge_ran(entry, usage.as_dict(), source="proxy")
        except StoreUnavailable:
            await self.journal_usage(org, request_id, key_hash, model, usage, estimated)
            return None
        except StoreRefusal as exc:
            log.error(
                "a settlement whose reservation was lost could not be charged",
                extra={"fields": {"request_id": request_id, "org": org, "code": exc.code}},
            )
            return None
        self.metrics.settle_failures.labels("recharged").inc()
        log.warning(
            "reservation lost by Redis: charged again by force",
            extra={"fields": {"request_id": request_id, "org": org}},
        )
        return result

    async def _account(
        self, org: str, result: Reply, price: Price, usage: Usage, policy: str
    ) -> Reply:
        """Metrics for a charge made (not for a replay), and the auto-reload it asked for."""
        if result.get("replay") != "1":
            family = price.family.name if price.known else "unknown"
            self._count(org, family, usage.as_dict(), result, policy)
        if result["reload_id"]:
            await self.payments.reload_requested(
                org, result["reload_id"], int(result["reload_amount"])
            )
        return result

    def track(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run the end of a settlement in a task of its own (a cancelled handler must not
        lose a charge), waited for at shutdown."""
        task = asyncio.ensure_future(work)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        return task

    async def drain(self) -> None:
        """Wait for the settlements still under way (shutdown)."""
        while self.inflight:
            await asyncio.gather(*list(self.inflight), return_exceptions=True)

    async def journal_usage(
        self,
        org: str,
        request_id: str,
        key_hash: str,
        model: str,
        usage: Usage,
        estimated: bool = False,
    ) -> None:
        entry: dict[str, Any] = {
            "t": int(time.time()),
            "rid": request_id,
            "org": org,
            "key": key_hash,
            "model": model,
            "usage": usage.as_dict(),
        }
        if estimated:
            entry["est"] = 1
        await self.journal.append(entry)

    def _count(
        self, org: str, family: str, detail: dict[str, int], result: Reply, policy: str
    ) -> None:
        m = self.metrics
        for kind in TOKEN_KINDS:
            if detail[kind]:
                m.child(m.tokens, family, kind).inc(detail[kind])
        cost = int(result["cost"])
        if result["mode"] == Mode.EXTRA_USAGE:
            m.spend(org, cost / NANO)
            over = int(result["overshoot"] or 0)
            if over > 0:
                m.overshoot.labels(policy or self.config.policy.reservation).inc(over / NANO)
                m.overshoot_requests.labels(policy or self.config.policy.reservation).inc()
        else:
            m.child(m.included).inc(cost / NANO)

    async def replay(self, entry: dict[str, Any]) -> None:
        """Charge one journaled request (fail_open, or a settlement Redis did not take):
        admitted by force, since it already ran, then settled; both idempotent by its
        request id."""
        await self._charge_ran(entry, entry["usage"])

    async def recover(self, entry: dict[str, Any]) -> None:
        """A request a dead worker had in flight: charged on what its journal says came
        (estimated where the usage did not all come), or released when nothing came."""
        usage = entry.get("usage")
        if usage is None:
            # refused: never reserved (fail_open), or settled or released already
            with contextlib.suppress(StoreRefusal):
                await self.store.release(entry["org"], entry["rid"])
            return
        await self._charge_ran(entry, usage)

    async def _late(self, entry: dict[str, Any]) -> bool:
        """Whether a journal entry must not be charged because it is too old to replay: past
        ``replay_window_s`` (less a margin for clocks) Redis may have forgotten the request,
        so a charge made then would not be recognised. Charged only when the durable ledger
        says it does not hold it; refused (and counted) when the ledger cannot tell."""
        written = entry.get("t")
        window = self.config.policy.replay_window_s
        if written is None or time.time() - float(written) < window - REPLAY_MARGIN_S:
            return False
        known: bool | None = None
        if self.ledger_has is not None:
            try:
                known = await self.ledger_has(entry["org"], entry["rid"])
            except Exception as exc:  # any failure: the ledger cannot tell
                log.warning("ledger lookup failed", extra={"fields": {"error": repr(exc)}})
        outcome = "refused" if known is None else ("known" if known else "charged")
        self.metrics.late_replays.labels(outcome).inc()
        if outcome == "refused":
            log.error(
                "journal entry past the replay window refused: the ledger cannot tell "
                "whether it was charged",
                extra={"fields": {"request_id": entry["rid"], "org": entry["org"]}},
            )
        return outcome != "charged"

    async def _charge_ran(
        self, entry: dict[str, Any], usage: dict[str, int], source: str = "journal"
    ) -> Reply | None:
        """Charge a request that ran: admitted by force, then settled (both idempotent by
        its request id); None when it is not to be charged (too late, or done already)."""
        org, rid = entry["org"], entry["rid"]
        if await self._late(entry):
            return None
        try:
            await self.store.admit(
                org, rid, who="k", credential=entry["key"], max_cost=0, est_cost=0, force=True
            )
        except StoreRefusal as exc:
            if exc.code == Refusal.DUPLICATE_ID:  # settled (its reply was lost) or released: done
                return None
            raise
        return await self.charge(
            org,
            rid,
            entry["model"],
            Usage.from_dict(usage),
            source=source,
            estimated=bool(entry.get("est")),
        )

    async def renew(self, every_s: float | None = None) -> None:
        """Leases: a request that outlives half of ``reservation_ttl_s`` has its reservation
        renewed, and again each half TTL while it runs, so that no admission reclaims it —
        one Redis call per half TTL of a long request's life, none for a short one. Looked
        at every quarter TTL (a background task; nothing per request)."""
        ttl = self.config.policy.reservation_ttl_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s or ttl / 4)
            now = loop.time()
            due = [f for f in self.journal.active.values() if f.lease and now - f.since >= ttl / 2]
            for f in due:
                f.since = now
                try:
                    reply = await self.store.renew(f.org, f.rid)
                except (StoreUnavailable, StoreRefusal):
                    self.metrics.renewals.labels("failed").inc()
                    continue
                self.metrics.renewals.labels("renewed" if reply["exp"] else "gone").inc()

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
