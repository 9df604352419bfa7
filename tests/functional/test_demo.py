from __future__ import annotations

import io

import pytest

from proxy.tools.demo import run
from tests.servers import free_port


@pytest.mark.parametrize("backend", ["redis-server", "in-process"])
async def test_demo_drives_both_plans_through_every_stage(
    backend: str, capfd: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    assert await run(port=free_port(), once=True, prefer=backend, out=out) == 0
    assert '"msg":"request"' not in capfd.readouterr().err  # its own view, no access lines
    text = out.getvalue()
    assert ("redis-server on redis://" in text) == (backend == "redis-server")
    for needle in [
        "acme    bob    #1   included",
        "extra usage  $0.15",
        "429 billing_error: monthly organization spend limit reached",
        "429 billing_error: monthly standard seat-tier spend limit reached",
        "429 rate_limit_error: You've hit your session limit",
        "erin accepts extra usage",
        "429 billing_error: monthly member spend limit reached",
        "acme (team): extra usage this month $1.20 of $1.20",
        "globex (enterprise): extra usage this month $0.90 of $5.00",
        "acme    bob     standard         13      $0.60        $1.20  429 billing_error",
    ]:
        assert needle in text, needle
