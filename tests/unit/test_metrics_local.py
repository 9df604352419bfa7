"""Hot-path metric series count locally and flush: the exposition is the same as if every
update had gone to prometheus-client directly."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from proxy.obs.metrics import Metrics

VALUES = [0.0, 0.0001, 0.0005, 0.00051, 0.003, 1, 2.5, 7, 600, 601, 1e9, 0.0004999]


def direct() -> bytes:
    r = CollectorRegistry()
    h = Histogram("eup_x_seconds", "x", ["k"], registry=r, buckets=(0.0005, 0.001, 2.5, 600))
    c = Counter("eup_y_total", "y", ["k"], registry=r)
    for v in VALUES:
        h.labels("a").observe(v)
        c.labels("b").inc(v)
    return generate_latest(r)


def test_local_series_flush_to_the_same_exposition() -> None:
    m = Metrics()
    r = m.registry = CollectorRegistry()
    h = Histogram("eup_x_seconds", "x", ["k"], registry=r, buckets=(0.0005, 0.001, 2.5, 600))
    c = Counter("eup_y_total", "y", ["k"], registry=r)
    for v in VALUES[:5]:
        m.child(h, "a").observe(v)
        m.child(c, "b").inc(v)
    m.flush()  # twice: a flush adds only what came since the last
    for v in VALUES[5:]:
        m.child(h, "a").observe(v)
        m.child(c, "b").inc(v)
    assert samples(m.render()) == samples(direct())  # render flushes first


def samples(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if b"_created" not in line]


def test_unlabelled_series_and_the_proxy_metrics() -> None:
    m = Metrics()
    m.child(m.overhead).observe(0.002)
    m.child(m.requests, "messages", "200").inc()
    m.spend("acme", 1.5)
    text = m.render().decode()
    assert 'eup_requests_total{outcome="200",route="messages"} 1.0' in text
    assert "eup_proxy_overhead_seconds_count 1.0" in text
    assert "eup_extra_usage_spend_usd_total 1.5" in text
