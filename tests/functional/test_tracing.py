"""Optional traces: with [tracing] otlp_endpoint, a metered request's spans (request,
admission, upstream, settlement) reach an OTLP/HTTP receiver (a real aiohttp server here,
decoding the protobuf the SDK sends); without it, nothing is made."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.http.appkeys import TRACING
from tests.conftest import ProxyFactory, message


async def test_a_metered_request_is_traced_when_tracing_is_on(
    proxy_factory: ProxyFactory, aiohttp_server: Any
) -> None:
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        doc = ExportTraceServiceRequest()
        doc.ParseFromString(await request.read())
        received.append(doc)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    receiver = await aiohttp_server(app)
    proxy = await proxy_factory(tracing={"otlp_endpoint": str(receiver.make_url("/v1/traces"))})
    org = await proxy.org("team")
    key = await proxy.member(org, "otto")
    status, headers, _ = await proxy.post(key, message())
    assert status == 200
    await proxy.settled()
    await asyncio.to_thread(proxy.server.app[TRACING].close)  # export what is left
    spans = [
        span
        for doc in received
        for rs in doc.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    names = sorted(span.name for span in spans)
    assert names == ["admission", "request", "settlement", "upstream"]
    (root,) = [s for s in spans if s.name == "request"]
    attrs = {a.key: a.value.string_value or a.value.int_value for a in root.attributes}
    assert attrs["eup.request_id"] == headers["x-request-id"] and attrs["eup.org"] == org
    assert all(s.trace_id == root.trace_id for s in spans)
    assert all(s.parent_span_id == root.span_id for s in spans if s is not root)
    assert all(s.start_time_unix_nano <= s.end_time_unix_nano for s in spans)


async def test_no_traces_without_an_endpoint(proxy_factory: ProxyFactory) -> None:
    proxy = await proxy_factory()
    assert proxy.server.app[TRACING].on is False
