"""The app's resources: each in a cleanup context of its own, closed in reverse order, every
close attempted and every error reported (aiohttp's CleanupError)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.web_app import CleanupError

from proxy.http.app import build_app
from proxy.http.appkeys import STORE
from proxy.ledger.db import LazyLedger
from proxy.metering.meter import Meter
from proxy.metering.payments import Payments
from proxy.storage.store import Store
from proxy.upstream.client import Upstream
from tests.conftest import make_config
from tests.servers import RedisServer


async def test_every_close_runs_in_reverse_and_every_error_is_reported(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []

    def recording(cls: type, name: str, fails: bool, method: str = "close") -> None:
        original = getattr(cls, method)

        async def close(self: object) -> None:
            closed.append(name)
            await original(self)
            if fails:
                raise RuntimeError(f"{name} failed to close")

        monkeypatch.setattr(cls, method, close)

    recording(Store, "store", fails=False)
    recording(Upstream, "upstream", fails=True)
    recording(LazyLedger, "ledger", fails=True)
    recording(Payments, "payments", fails=False)
    recording(Meter, "settlements drained", fails=False, method="drain")
    app = build_app(make_config(redis_server.url, "http://127.0.0.1:9"), access_log_fd=None)
    runner = web.AppRunner(app)
    await runner.setup()
    store = app[STORE]
    assert await store.ping()
    with pytest.raises(CleanupError) as err:
        await runner.cleanup()
    # the reverse of the order they were opened in; a failing close does not skip the rest
    assert closed == ["settlements drained", "payments", "ledger", "upstream", "store"]
    assert sorted(str(e) for e in err.value.exceptions) == [
        "ledger failed to close",
        "upstream failed to close",
    ]
    assert store.pipeliner is not None and store.pipeliner.closed
