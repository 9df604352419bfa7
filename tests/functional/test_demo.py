from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.tools.demo import run
from tests.servers import free_port

BIN = Path(sys.executable).parent / "extra-usage-proxy"


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


def test_sigterm_stops_the_demo_and_everything_it_started() -> None:
    """The demo left serving, then SIGTERM (as a terminal closing or a process manager sends):
    it exits 0 and its redis-server is gone with it."""
    proc = subprocess.Popen(
        [str(BIN), "demo", "--port", str(free_port()), "--redis", "redis-server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C to stop" in line:
                break
        else:
            raise AssertionError("the demo did not start serving")
        redis = subprocess.run(
            ["pgrep", "-P", str(proc.pid), "redis-server"], capture_output=True, text=True
        ).stdout.split()
        assert len(redis) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{redis[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{redis[0]}").exists()
