"""Prometheus metrics, on a registry of the application's own (no module globals).

Names are in base units (seconds, USD) with ``_total`` on counters. Labels are bounded: routes,
outcomes, modes, reasons, model families from the price table ("unknown" otherwise) — never
member ids; org ids only when ``metrics.org_labels`` is on.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any, overload

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import generate_latest

from proxy.core.vocabulary import Refusal

NANO = 1e9
_LATENCY = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)


class LocalCounter:
    """Increments of one counter series, added to it at flush."""

    __slots__ = ("pending", "target")

    def __init__(self, target: Counter) -> None:
        self.target = target
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            amount, self.pending = self.pending, 0.0
            self.target.inc(amount)


class LocalHistogram:
    """Observations of one histogram series, as bucket counts and a sum, added at flush
    exactly as ``Histogram.observe`` would have (a value goes to the first bucket whose upper
    bound is at least the value)."""

    __slots__ = ("bounds", "counts", "observed", "target", "total")

    def __init__(self, target: Histogram) -> None:
        self.target = target
        self.bounds: list[float] = list(target._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.observed = 0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount
        self.observed += 1

    def flush(self) -> None:
        if not self.observed:
            return
        buckets = self.target._buckets
        for i, n in enumerate(self.counts):
            if n:
                buckets[i].inc(n)
                self.counts[i] = 0
        self.target._sum.inc(self.total)
        self.total = 0.0
        self.observed = 0


# the label values of the series alerts watch, made at 0 from the start
SETTLE_FAILURES = (
    "journaled",
    "recharged",
    "release_failed",
    Refusal.UNKNOWN_RESERVATION,
    Refusal.RELEASED,
    Refusal.UNREADABLE,
)
JOURNAL_OUTCOMES = (
    "written",
    "replayed",
    "recovered",
    "torn",
    "write_failed",
    "dropped_unknown_key",
    "dropped_unknown_org",
    "dropped_unknown_member",
    "dropped_member_disabled",
)
CONNECTION_REFUSALS = ("total", "per_client", "head_per_connection", "head_total")


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, org_labels: bool = False
    ) -> None:
        # per-org series only when the operator asks for them (cardinality grows with orgs)
        self.org_labels = org_labels
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "eup_requests_total", "Requests by route and outcome", ["route", "outcome"], registry=r
        )
        self.decisions = Counter(
            "eup_admission_decisions_total",
            "Admission decisions by mode and reason",
            ["mode", "reason"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "eup_upstream_latency_seconds",
            "Upstream request duration, to the last byte",
            buckets=_LATENCY,
            registry=r,
        )
        self.upstream_ttfb = Histogram(
            "eup_upstream_time_to_first_byte_seconds",
            "Upstream time to the first response byte",
            buckets=_LATENCY,
            registry=r,
        )
        self.overhead = Histogram(
            "eup_proxy_overhead_seconds",
            "Time the proxy adds before forwarding (auth, admission)",
            buckets=_FAST,
            registry=r,
        )
        self.redis_latency = Histogram(
            "eup_redis_call_seconds",
            "Redis script call latency",
            ["script"],
            buckets=_FAST,
            registry=r,
        )
        self.redis_errors = Counter(
            "eup_redis_errors_total", "Redis errors", ["script"], registry=r
        )
        self.tokens = Counter(
            "eup_tokens_total",
            "Tokens metered by model family and kind",
            ["model", "kind"],
            registry=r,
        )
        self.extra_spend = Counter(
            "eup_extra_usage_spend_usd_total",
            "Extra usage charged, USD",
            ["org"] if org_labels else [],
            registry=r,
        )
        self.included = Counter(
            "eup_included_usage_usd_total", "Included (seat allowance) usage, USD", registry=r
        )
        self.overshoot = Counter(
            "eup_reservation_overshoot_usd_total",
            "Actual cost above the reservation, USD",
            ["policy"],
            registry=r,
        )
        self.overshoot_requests = Counter(
            "eup_reservation_overshoot_requests_total",
            "Requests whose cost exceeded their reservation",
            ["policy"],
            registry=r,
        )
        self.unknown_models = Counter(
            "eup_unknown_model_requests_total",
            "Requests for a model id missing from the price table, by the model line it was "
            "priced as (none: the default family)",
            ["line"],
            registry=r,
        )
        self.reloads = Counter(
            "eup_auto_reloads_total", "Auto-reloads by outcome", ["outcome"], registry=r
        )
        self.active_streams = Gauge(
            "eup_active_streams", "Streams being forwarded", registry=r, multiprocess_mode="livesum"
        )
        self.settle_failures = Counter(
            "eup_settle_failures_total",
            "Settlements that could not be written",
            ["reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "eup_upstream_errors_total", "Upstream failures by kind", ["kind"], registry=r
        )
        self.worker_restarts = Counter(
            "eup_worker_restarts_total",
            "Workers of serve --workers N that died and were replaced (the supervisor counts)",
            registry=r,
        )
        self.connections_refused = Counter(
            "eup_connections_refused_total",
            "Connections or request heads refused by the server's bounds: total, per_client "
            "(open connections), head_per_connection, head_total (request head bytes)",
            ["reason"],
            registry=r,
        )
        self.body_budget_refused = Counter(
            "eup_decoded_bodies_refused_total",
            "Compressed request bodies refused because the decoded bodies in flight were at "
            "server.max_decoded_bytes_in_flight",
            registry=r,
        )
        self.write_timeouts = Counter(
            "eup_write_timeouts_total",
            "Answers cut because the member stopped reading for server.write_timeout_s",
            registry=r,
        )
        self.uploads = Counter(
            "eup_streamed_uploads_total",
            "Large bodies forwarded as they arrived: sent (admitted, last chunk released), "
            "resent (sent again whole), cut (not admitted: cut off before the last chunk)",
            ["outcome"],
            registry=r,
        )

        self.journal_entries = Counter(
            "eup_journal_entries_total",
            "journal entries by outcome: usage written, replayed, requests of a dead worker "
            "recovered, dropped_*, torn, write_failed",
            ["outcome"],
            registry=r,
        )
        self.renewals = Counter(
            "eup_reservation_renewals_total",
            "leases of long requests (their record, and any reservation) renewed while they "
            "ran, by outcome (renewed, gone: settled or released already, failed)",
            ["outcome"],
            registry=r,
        )
        self.late_replays = Counter(
            "eup_late_replays_total",
            "journal replays older than policy.replay_window_s (Redis may have forgotten "
            "them), by outcome: charged (not in the durable ledger), known (in it: "
            "nothing charged), refused (the ledger could not tell: nothing charged)",
            ["outcome"],
            registry=r,
        )
        self.fail_open = Counter(
            "eup_fail_open_requests_total",
            "Requests let through unmetered while Redis was unavailable",
            registry=r,
        )
        self.fail_open_refused = Counter(
            "eup_fail_open_refused_total",
            "Requests refused under fail_open with Redis down: a key this process had not "
            "checked within policy.fail_open_known_s",
            registry=r,
        )
        # every series an alert watches exists from the start, at 0: a labelled counter
        # appears only at its first event otherwise, and increase() never sees it rise
        for counter, values in (
            (self.reloads, ("requested", "confirmed", "failed", "webhook_failed")),
            (self.settle_failures, SETTLE_FAILURES),
            (self.journal_entries, JOURNAL_OUTCOMES),
            (self.late_replays, ("charged", "known", "refused")),
            (self.renewals, ("renewed", "gone", "failed")),
            (self.upstream_errors, ("connect", "mid_stream", "member_gone")),
            (self.connections_refused, CONNECTION_REFUSALS),
        ):
            for value in values:
                counter.labels(value)
        # the series every metered request updates, looked up once
        self.h_overhead = self.child(self.overhead)
        self.h_upstream_ttfb = self.child(self.upstream_ttfb)
        self.h_upstream_latency = self.child(self.upstream_latency)

    @overload
    def child(self, metric: Histogram, *labels: str) -> LocalHistogram: ...
    @overload
    def child(self, metric: Counter, *labels: str) -> LocalCounter: ...

    def child(self, metric: Counter | Histogram, *labels: str) -> LocalCounter | LocalHistogram:
        """A series of a counter or histogram for the hot path, cached and counted locally:
        ``labels()`` takes a lock and builds a key every call, and each update of a series
        takes a lock (and, with ``--workers``, writes a shared file). Counts gather here and
        reach the series at ``flush()`` — before every exposition and once a second."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            if isinstance(metric, Histogram):
                found = LocalHistogram(metric.labels(*labels) if labels else metric)
            else:
                found = LocalCounter(metric.labels(*labels) if labels else metric)
            self._children[key] = found
        return found

    def flush(self) -> None:
        for series in self._children.values():
            series.flush()

    def spend(self, org: str, usd: float) -> None:
        self.child(self.extra_spend, *((org,) if self.org_labels else ())).inc(usd)

    def render(self) -> bytes:
        """The exposition; with ``--workers N`` (PROMETHEUS_MULTIPROC_DIR set) the sum over
        every worker, whichever one answers the scrape (each worker flushes once a second)."""
        self.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class SinkMetrics:
    """The ledger sink's own metrics (``ledger-sink --metrics-port``): how far behind it is,
    what it moved, what failed. Every series exists from the start, at 0."""

    ERROR_KINDS = ("redis", "postgres")

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.lag_entries = Gauge(
            "eup_sink_lag_entries", "Ledger entries not yet in PostgreSQL, all orgs", registry=r
        )
        self.lag_seconds = Gauge(
            "eup_sink_lag_seconds",
            "Age of the oldest ledger entry not yet in PostgreSQL (0: none waits); keep it "
            "well under policy.replay_window_s",
            registry=r,
        )
        self.written = Counter(
            "eup_sink_entries_written_total", "Ledger entries moved into PostgreSQL", registry=r
        )
        self.errors = Counter(
            "eup_sink_errors_total",
            "Sink passes that failed, by what was unavailable (redis, postgres)",
            ["kind"],
            registry=r,
        )
        for kind in self.ERROR_KINDS:
            self.errors.labels(kind)
        self.dead_letters = Counter(
            "eup_sink_dead_letters_total",
            "Ledger entries PostgreSQL refused, moved to the org's dead-letter stream",
            registry=r,
        )
        self.redis_restarts = Counter(
            "eup_sink_redis_restarts_total",
            "Redis restarts the sink saw (its run id changed): each org's counters are then "
            "rebuilt from the ledger, since a restarted Redis has only what it persisted",
            registry=r,
        )
        self.repairs = Counter(
            "eup_sink_counter_repairs_total",
            "Orgs whose counters the sink rebuilt from the ledger after a Redis restart",
            registry=r,
        )
        self.last_pass = Gauge(
            "eup_sink_last_pass_timestamp_seconds",
            "When the sink last finished a pass over every org",
            registry=r,
        )

        self.last_pass_at = 0.0  # the same, for the sink's /healthz

    def passed(self, now: float) -> None:
        """A pass over every org finished at ``now``."""
        self.last_pass_at = now
        self.last_pass.set(now)

    def render(self) -> bytes:
        return generate_latest(self.registry)
