"""Optional OpenTelemetry traces of metered requests, exported over OTLP/HTTP (``[tracing]
otlp_endpoint``), for operators who use them; off by default.

Nothing runs on the request path to make them: a request already notes when it arrived, went
upstream and was settled (for its metrics); once it is settled, and only when tracing is on,
its spans are made from those times — ``request``, with ``admission`` (arrival to sent),
``upstream`` (sent to the answer's end) and ``settlement`` (to the charge written) — and a
batch processor exports them from a thread of its own. Off, it costs one attribute check a
request.
"""

from __future__ import annotations

import time
from typing import Any

_PERF_TO_WALL_NS = time.time_ns() - time.perf_counter_ns()


def wall_ns(perf: float) -> int:
    """A ``time.perf_counter()`` reading as epoch nanoseconds."""
    return int(perf * 1e9) + _PERF_TO_WALL_NS


class Tracing:
    def __init__(self, endpoint: str = "", service: str = "extra-usage-proxy") -> None:
        self.on = bool(endpoint)
        self._provider: Any = None
        self._tracer: Any = None
        if not self.on:
            return
        # imported only when on: the SDK is an optional extra ("otel")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._provider = provider
        self._tracer = provider.get_tracer("extra-usage-proxy")

    def request(
        self,
        attributes: dict[str, Any],
        arrived: float,
        sent: float,
        settling: float,
        settled: float,
    ) -> None:
        """The spans of one metered request, from its ``perf_counter()`` times."""
        from opentelemetry import trace

        tracer = self._tracer
        root = tracer.start_span("request", start_time=wall_ns(arrived), attributes=attributes)
        context = trace.set_span_in_context(root)
        for name, start, end in (
            ("admission", arrived, sent),
            ("upstream", sent, settling),
            ("settlement", settling, settled),
        ):
            span = tracer.start_span(name, context=context, start_time=wall_ns(start))
            span.end(end_time=wall_ns(max(end, start)))
        root.end(end_time=wall_ns(settled))

    def close(self) -> None:
        """Export what is left (at shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()
