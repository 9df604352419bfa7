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

from proxy.tools.cli import main
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
    port = free_port()
    proc = _serve(
        ["--config", str(ROOT / "config" / "example.toml"), "--port", str(port)],
        env_for(redis_server, upstream),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await _ready(base)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                base + "/admin/v1/orgs",
                json={"id": "cli-org", "plan": "team"},
                headers={"authorization": "Bearer op"},
            ) as r,
        ):
            assert r.status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b'"msg":"serving"' in err


def _listeners(port: int) -> int:
    """Listening sockets on the port: one per worker with SO_REUSEPORT."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for r in rows if r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A")


def env_for(redis_server: RedisServer, upstream: Any) -> dict[str, str]:
    """The environment of a `serve` process against the suite's Redis and mock upstream."""
    up_server, _ = upstream
    return {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "OPERATOR_TOKEN": "op",
        "UPSTREAM_URL": str(up_server.make_url("")).rstrip("/"),
        "UPSTREAM_API_KEY": "k",
    }


async def _member_key(base: str, org: str) -> str:
    """Provision an org and one member through the admin API; return the member's key."""
    op = {"authorization": "Bearer op"}
    async with aiohttp.ClientSession() as s:
        async with s.post(
            base + "/admin/v1/orgs", json={"id": org, "plan": "team"}, headers=op
        ) as r:
            assert r.status in (201, 409)
        async with s.put(
            base + f"/admin/v1/orgs/{org}/members/m",
            headers=op,
            json={"role": "member", "tier": "standard"},
        ) as r:
            assert r.status in (200, 201)
        async with s.post(base + f"/admin/v1/orgs/{org}/members/m/keys", headers=op) as r:
            return str((await r.json())["key"])


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN), "serve", *args], env=env, stderr=subprocess.PIPE)


async def _ready(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            try:
                async with s.get(base + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the proxy did not become ready")


async def test_workers_share_one_port_and_metrics_sum_over_them(
    redis_server: RedisServer, upstream: Any
) -> None:
    port = free_port()
    proc = _serve(["--workers", "2", "--port", str(port)], env_for(redis_server, upstream))
    base = f"http://127.0.0.1:{port}"
    try:
        await _ready(base)
        for _ in range(200):  # the second worker may start listening a little later
            if _listeners(port) >= 2:
                break
            await asyncio.sleep(0.05)
        assert _listeners(port) == 2
        key = await _member_key(base, "wk-org")
        for _ in range(40):  # a new connection each: the kernel spreads them over workers
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    base + "/v1/messages",
                    headers={"x-api-key": key},
                    json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []},
                ) as r,
            ):
                assert r.status == 200
        total = 'eup_requests_total{outcome="200",route="messages"} 40.0'

        async def scrape() -> str:
            async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
                return await r.text()

        # each worker adds its counts to the shared series once a second
        for _ in range(60):
            if total in await scrape():
                break
            await asyncio.sleep(0.1)
        scrapes = [await scrape() for _ in range(6)]  # whichever worker answers
        for text in scrapes:
            assert total in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    pids = {
        line.split(b'"pid":')[1].split(b",")[0]
        for line in err.splitlines()
        if b'"msg":"request"' in line
    }
    assert len(pids) == 2  # both workers served


async def test_sigterm_lets_an_open_stream_finish_and_settles_it(
    redis_server: RedisServer, upstream: Any
) -> None:
    port = free_port()
    proc = _serve(["--port", str(port)], env_for(redis_server, upstream))
    base = f"http://127.0.0.1:{port}"
    try:
        await _ready(base)
        key = await _member_key(base, "gs-org")
        async with aiohttp.ClientSession() as s:
            headers = {"x-api-key": key, "x-mock-delay-ms": "50", "x-mock-events": "20"}
            async with s.post(
                base + "/v1/messages",
                headers=headers,
                json={
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 100,
                    "stream": True,
                    "messages": [],
                },
            ) as r:
                first = await r.content.readany()
                proc.send_signal(signal.SIGTERM)  # mid-stream
                rest = await r.read()
        body = first + rest
        assert b"event: message_stop" in body  # the stream was allowed to finish
    finally:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b'"stream":"complete"' in err
    assert b"shutting down" in err


def test_functions_lists_the_libraries_and_prunes_the_old_ones(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each build loads its own library (a rolling upgrade runs two side by side); once a
    rollout is over, ``functions --prune`` deletes the others and keeps this build's."""
    import redis

    from proxy.storage.functions import _library_name
    from proxy.storage.scripts import library_source

    name, code = library_source()
    old = "#!lua name=eup_000000000000\nredis.register_function('eup_0_f', function() end)"
    other = "#!lua name=theirs\nredis.register_function('theirs_f', function() end)"
    with redis.Redis(port=redis_server.port) as c:
        c.function_flush()
        c.function_load(code)
        c.function_load(old)
        c.function_load(other)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    assert main(["functions"]) == 0
    assert capsys.readouterr().out == f"eup_000000000000\n{name}  (this build)\n"
    assert main(["functions", "--prune"]) == 0
    assert capsys.readouterr().out == f"deleted eup_000000000000\n{name}  (this build)\n"
    with redis.Redis(port=redis_server.port) as c:
        names = sorted(_library_name(entry) for entry in c.function_list())
    assert names == sorted([name, "theirs"])  # another product's library is not touched
