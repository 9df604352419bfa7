from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.cli import main
from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "extra-usage-proxy"


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "config" / "example.toml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_config_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nreservation = "lax"\n')
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: policy.reservation must be one of strict, estimate, none" in err


async def test_serve_runs_the_proxy_and_stops_on_sigterm(
    redis_server: RedisServer, upstream: Any
) -> None:
    up_server, _ = upstream
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "OPERATOR_TOKEN": "op",
        "UPSTREAM_URL": str(up_server.make_url("")).rstrip("/"),
        "UPSTREAM_API_KEY": "k",
    }
    proc = subprocess.Popen(
        [str(BIN), "serve", "--config", str(ROOT / "config" / "example.toml"), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(base + "/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            async with s.post(
                base + "/admin/v1/orgs",
                json={"id": "cli-org", "plan": "team"},
                headers={"authorization": "Bearer op"},
            ) as r:
                assert r.status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b'"msg":"serving"' in err
