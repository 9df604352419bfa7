"""What an SRE sees of supervision and the drain, on this machine, measured on the real CLI.

    .venv/bin/python bench/drain.py [--rounds 5]

Starts a redis-server, the mock upstream and ``serve --workers 2`` with the defaults
(``drain_delay_s`` 5) and ``shutdown_grace_s`` of --grace (8), then, each round:

- kills one worker with SIGKILL and times until ``/readyz`` is 200 with both workers again;

and once, with streams running that end within the grace and one that does not:

- sends SIGTERM and times until ``/readyz`` answers 503, until the process is gone, and checks
  that the short streams completed (200, every event) — against the bound
  ``drain_delay_s + shutdown_grace_s + 3`` s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy.tools.embedded import RedisServer, free_port

BIN = Path(sys.executable).parent / "extra-usage-proxy"
OP = {"authorization": "Bearer op"}


async def status(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with session.get(url) as r:
            return r.status, await r.json(content_type=None)
    except aiohttp.ClientError:
        return 0, None


def workers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


async def wait_for(check: Any, limit: float = 60) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > limit:
            raise TimeoutError
        await asyncio.sleep(0.01)
    return time.monotonic() - started


Process = subprocess.Popen[bytes]


def launch(grace: float) -> tuple[RedisServer, Process, Process, int]:
    """A redis-server, the mock upstream and ``serve --workers 2`` on free ports."""
    redis = RedisServer().start()
    mock_port, port = free_port(), free_port()
    mock = subprocess.Popen(
        [str(BIN), "mock-upstream", "--port", str(mock_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = Path(tempfile.mkdtemp()) / "drain.toml"
    config.write_text(f"[server]\nshutdown_grace_s = {grace}\n")
    env = {
        **os.environ,
        "REDIS_URL": redis.url,
        "OPERATOR_TOKEN": "op",
        "UPSTREAM_URL": f"http://127.0.0.1:{mock_port}",
        "UPSTREAM_API_KEY": "k",
    }
    proc = subprocess.Popen(
        [str(BIN), "serve", "--workers", "2", "--port", str(port), "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return redis, mock, proc, port


async def measure(proc: Process, port: int, rounds: int, grace: float) -> None:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as s:

        async def full() -> bool:
            code, doc = await status(s, base + "/readyz")
            return code == 200 and doc.get("workers") == "2/2"

        await wait_for(full)
        replaced = []
        for _ in range(rounds):
            victim = workers_of(proc.pid)[0]
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            async def back(victim: int = victim) -> bool:
                now = workers_of(proc.pid)
                return len(now) == 2 and victim not in now and await full()

            await wait_for(back)
            replaced.append(time.monotonic() - killed)
        print(
            f"worker SIGKILL -> /readyz 200 with 2/2 workers: median "
            f"{statistics.median(replaced):.2f} s, max {max(replaced):.2f} s "
            f"({rounds} rounds)"
        )

        await s.post(base + "/admin/v1/orgs", json={"id": "drain", "plan": "team"}, headers=OP)
        await s.put(
            base + "/admin/v1/orgs/drain/members/m",
            json={"role": "member", "tier": "standard"},
            headers=OP,
        )
        async with s.post(base + "/admin/v1/orgs/drain/members/m/keys", headers=OP) as r:
            key = (await r.json())["key"]

        async def stream(delay_ms: int, events: int) -> tuple[int, int]:
            headers = {
                "x-api-key": key,
                "x-mock-delay-ms": str(delay_ms),
                "x-mock-events": str(events),
            }
            body = {
                "model": "claude-sonnet-4-5",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            try:
                async with (
                    aiohttp.ClientSession() as c,
                    c.post(base + "/v1/messages", json=body, headers=headers) as r,
                ):
                    text = await r.text()
                    return r.status, text.count("event: ")
            except aiohttp.ClientError:
                return 0, -1

        short = [asyncio.create_task(stream(400, 10)) for _ in range(20)]  # ~4 s each
        longer = asyncio.create_task(stream(1000, int(grace) + 60))  # outlives the grace
        await asyncio.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            return (await status(s, base + "/readyz"))[0] == 503

        unready = await wait_for(draining, 5)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, proc.wait)
        gone = time.monotonic() - sent
        results = await asyncio.gather(*short)
        complete = sum(1 for code, events in results if code == 200 and events >= 10)
        cut = await longer
        bound = 5 + grace + 3
        print(f"SIGTERM -> /readyz 503: {unready:.2f} s")
        print(f"SIGTERM -> process gone: {gone:.2f} s (bound {bound:.0f} s)")
        print(f"exit status: {proc.returncode}")
        print(f"streams that end within the grace completed: {complete} of {len(short)}")
        print(f"a stream longer than the grace: status {cut[0]}, cut at the grace's end")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grace", type=float, default=8.0)
    args = parser.parse_args()
    redis, mock, proc, port = launch(args.grace)
    try:
        uvloop.run(measure(proc, port, args.rounds, args.grace))
    finally:
        if proc.poll() is None:
            proc.kill()
        mock.terminate()
        redis.cleanup()
