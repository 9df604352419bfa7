"""The proxy as an SRE runs it: a worker that dies is replaced and readiness says so meanwhile;
SIGTERM drains (readiness 503 first, the listener still open) and the process is gone in
bounded time; readiness follows the Redis policy; secrets from files; startup errors in one
line. Real processes (``extra-usage-proxy serve``), a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError, parse_config
from proxy.tools.cli import main
from tests.conftest import Proxy, ProxyFactory
from tests.functional.test_cli import env_for
from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "extra-usage-proxy"


async def status(url: str) -> tuple[int, Any]:
    try:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, await r.json(content_type=None)
    except aiohttp.ClientError:
        return 0, None


async def until(check: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [
        int(p)
        for p in out.split()
        if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()  # not the tracker
    ]


async def test_a_dead_worker_is_replaced_and_sigterm_reaches_every_worker(
    redis_server: RedisServer, upstream: Any
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(BIN), "serve", "--workers", "2", "--port", str(port)],
        env=env_for(redis_server, upstream),
        stderr=subprocess.PIPE,
    )
    try:

        async def full() -> bool:
            code, doc = await status(base + "/readyz")
            return code == 200 and doc.get("workers") == "2/2"

        await until(full)
        workers = children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)

        async def replaced() -> bool:
            code, _ = await status(base + "/readyz")
            now = children(proc.pid)
            return len(now) == 2 and workers[0] not in now and code == 200

        await until(replaced, 10)

        async def counted() -> bool:
            async with aiohttp.ClientSession() as s, s.get(base + "/metrics") as r:
                return "eup_worker_restarts_total 1.0" in await r.text()

        await until(counted, 10)
        current = children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b"worker died: replacing it" in err
    for pid in current:  # every worker is gone with the supervisor
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes()


async def test_sigterm_drains_then_exits_in_bounded_time(
    redis_server: RedisServer, upstream: Any, tmp_path: Path
) -> None:
    """Readiness turns 503 at once while the listener still answers for drain_delay_s; a
    stream longer than the grace does not hold the process: it is gone within drain_delay_s
    + shutdown_grace_s + 3 s of SIGTERM."""
    config = tmp_path / "drain.toml"
    config.write_text("[server]\ndrain_delay_s = 1\nshutdown_grace_s = 2\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = env_for(redis_server, upstream)
    proc = subprocess.Popen(
        [str(BIN), "serve", "--config", str(config), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
    )

    async def ready() -> bool:
        return (await status(base + "/readyz"))[0] == 200

    await until(ready)
    op = {"authorization": "Bearer op"}
    async with aiohttp.ClientSession() as s:
        await s.post(base + "/admin/v1/orgs", json={"id": "drain", "plan": "team"}, headers=op)
        await s.put(
            base + "/admin/v1/orgs/drain/members/m",
            json={"role": "member", "tier": "standard"},
            headers=op,
        )
        async with s.post(base + "/admin/v1/orgs/drain/members/m/keys", headers=op) as r:
            key = (await r.json())["key"]
    session = aiohttp.ClientSession()
    long = asyncio.create_task(
        session.post(
            base + "/v1/messages",
            json={"model": "claude-sonnet-4-5", "max_tokens": 50, "stream": True, "messages": []},
            headers={"x-api-key": key, "x-mock-delay-ms": "1000", "x-mock-events": "20"},
        )
    )
    await asyncio.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    code, doc = await status(base + "/readyz")
    assert (code, doc) == (503, {"status": "draining"})
    assert (await status(base + "/healthz"))[0] == 200  # still listening
    proc.communicate(timeout=15)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0 and elapsed < 1 + 2 + 3, elapsed
    response = await long
    with pytest.raises(aiohttp.ClientError):
        await response.read()  # cut at the end of the grace
    await session.close()


async def test_readiness_follows_the_redis_policy(proxy_factory: ProxyFactory) -> None:
    """Redis down: under fail_open the pod stays ready and says why; under fail_closed on
    one Redis it is taken out."""
    server = RedisServer().start()
    try:
        opened = await proxy_factory(redis={"url": server.url}, policy={"fail_mode": "open"})
        closed = await proxy_factory(redis={"url": server.url})
        server.cleanup()
        code, doc = await status(opened.url + "/readyz")
        assert code == 200 and doc["redis"] == "unavailable" and doc["fail_mode"] == "open"
        code, doc = await status(closed.url + "/readyz")
        assert code == 503 and doc["status"] == "unavailable"
    finally:
        server.cleanup()


def test_every_secret_may_come_from_a_file(tmp_path: Path) -> None:
    token = tmp_path / "operator"
    token.write_text("op-from-a-file\n")
    config = parse_config({}, "<t>", {"OPERATOR_TOKEN_FILE": str(token), "SERVICE_TOKEN": "s"})
    assert config.operator_token == "op-from-a-file"
    with pytest.raises(ConfigError, match="SERVICE_TOKEN_FILE: cannot read"):
        parse_config({}, "<t>", {"SERVICE_TOKEN_FILE": str(tmp_path / "missing")})
    url = tmp_path / "redis"
    url.write_text("redis://10.0.0.1:6379/0")
    assert parse_config({}, "<t>", {"REDIS_URL_FILE": str(url)}).redis.url.startswith("redis://10")


def test_check_config_refuses_bad_urls_and_warns_of_missing_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("UPSTREAM_API_KEY", "OPERATOR_TOKEN", "SERVICE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('[redis]\nurl = "http//localhost"\n')
    assert main(["check-config", str(bad)]) == 2
    assert "redis.url must be a URL such as redis://host:port" in capsys.readouterr().err
    bad.write_text('[ledger]\ndatabase_url = "mysql://x"\n')
    assert main(["check-config", str(bad)]) == 2
    good = tmp_path / "good.toml"
    good.write_text("")
    assert main(["check-config", str(good)]) == 0
    err = capsys.readouterr().err
    assert "warning: UPSTREAM_API_KEY" in err and "warning: OPERATOR_TOKEN" in err


def test_a_port_in_use_is_one_clear_line(redis_server: RedisServer) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "REDIS_URL": redis_server.url, "OPERATOR_TOKEN": "op"}
        out = subprocess.run(
            [str(BIN), "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


async def test_readiness_is_503_while_a_worker_is_missing(
    proxy: Proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the supervisor writes as workers come and go decides readiness: 1 of 2 alive is
    not full strength (503, "degraded"); 2 of 2 is."""
    workers = tmp_path / "workers"
    monkeypatch.setenv("EUP_WORKERS_FILE", str(workers))
    workers.write_text("1 2")
    code, doc = await status(proxy.url + "/readyz")
    assert (code, doc) == (503, {"status": "degraded", "workers": "1/2"})
    workers.write_text("2 2")
    code, doc = await status(proxy.url + "/readyz")
    assert code == 200 and doc == {"status": "ready", "workers": "2/2"}
