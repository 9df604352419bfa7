"""Typed application keys: every shared resource is opened in cleanup_ctx and stored here."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.config import Config
from proxy.obs.logs import AccessLog
from proxy.obs.metrics import Metrics
from proxy.obs.tracing import Tracing

if TYPE_CHECKING:
    from proxy.http.body import DecodedBodies
    from proxy.ledger.db import LazyLedger
    from proxy.metering.meter import Meter
    from proxy.metering.payments import Payments
    from proxy.storage.store import Store
    from proxy.upstream.client import Upstream
    from proxy.upstream.slots import OrgSlots

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
TRACING = web.AppKey("tracing", Tracing)  # OpenTelemetry traces (off: nothing is made)
STORE: web.AppKey[Store] = web.AppKey("store")
UPSTREAM: web.AppKey[Upstream] = web.AppKey("upstream")  # the Anthropic API
SLOTS: web.AppKey[OrgSlots] = web.AppKey("slots")  # each org's requests in flight upstream
PAYMENTS: web.AppKey[Payments] = web.AppKey("payments")
LEDGER: web.AppKey[LazyLedger] = web.AppKey("ledger")
METER: web.AppKey[Meter] = web.AppKey("meter")  # admission and settlement around a request
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
# set on SIGTERM: readiness answers 503 while the process drains
DRAINING = web.AppKey("draining", asyncio.Event)
# decoded compressed request bodies held at once in the process (bounded)
DECODED: web.AppKey[DecodedBodies] = web.AppKey("decoded_bodies")
REQUEST_ID = web.RequestKey("request_id", str)  # the id the errors middleware gave it
# the request carried a credential checked just now (a key, a token, the service token): only
# then is its connection kept alive, so that unauthenticated probes cannot hold connections
VERIFIED = web.RequestKey("verified", bool)
