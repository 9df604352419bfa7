"""Instructions per request, counted by valgrind's callgrind: the bare pass-through (b) and the
candidate (c), each serving N sequential small requests on loopback after a warm-up; and
redis-server's instructions per metered request of the candidate (its two script calls).

    .venv/bin/python bench/instructions.py [--requests 300]

Timings on a shared two-core machine move by ±15 % from run to run; an instruction count does
not (the same binary, inputs and environment give the same total). Only user-space work is
counted — not the kernel's share of the system calls, nor the mock or the client. Prints one
JSON object and writes it to bench/results/instructions.json; takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, OPERATOR, ROOT, SMALL, RedisServer, Stack, free_port, sequential

# nothing is counted until the warm-up is over
CALLGRIND = ("valgrind", "--tool=callgrind", "--instr-atstart=no")


def measured(
    url: str, headers: dict[str, str], requests: int, dumps: Path, pid: str | None = None
) -> int:
    """Instructions per request: counting on, ``requests`` requests to ``url``, a dump of the
    callgrind processes (all of them, or ``pid``), and the dumps' totals (``*.1`` in
    ``dumps``: the first dump, taken after the measured requests) divided by the requests."""
    target = [pid] if pid else []
    subprocess.run(["callgrind_control", "-i", "on", *target], capture_output=True, check=True)
    asyncio.run(sequential(url, headers, json.dumps(SMALL).encode(), requests))
    subprocess.run(["callgrind_control", "-d", *target], capture_output=True, check=True)
    total = sum(summary(dump) for dump in dumps.glob("*.1"))
    return total // (requests + 20)  # sequential() sends 20 warm-up requests of its own


def count(stack: Stack, which: str, requests: int) -> int:
    """Instructions of one proxy process while it serves ``requests`` requests."""
    port = free_port()
    out = Path(tempfile.mkdtemp(prefix="eup-callgrind-"))
    env = {
        **os.environ,
        "REDIS_URL": stack.redis.url,
        "OPERATOR_TOKEN": OPERATOR,
        "UPSTREAM_URL": stack.url(stack.mock_port),
        "UPSTREAM_API_KEY": "bench",
    }
    if which == "c_candidate":
        cmd = [str(BIN), "serve", "--config", str(ROOT / "bench" / "config.toml")]
        cmd += ["--port", str(port)]
    else:
        cmd = [sys.executable, str(ROOT / "bench" / "passthrough.py"), "--port", str(port)]
        cmd += ["--upstream", stack.url(stack.mock_port)]
    proc = subprocess.Popen(
        [
            *CALLGRIND,
            "--trace-children=yes",  # the pass-through serves from a child process
            f"--callgrind-out-file={out}/cg.%p",
            *cmd,
        ],
        env=env,
        cwd=stack.journal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    body = json.dumps(SMALL).encode()
    try:
        deadline = time.monotonic() + 120  # startup under valgrind is slow
        while True:
            try:
                asyncio.run(sequential(url, stack.headers(), body, 100))
                break
            except (OSError, AssertionError, aiohttp.ClientError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return measured(url, stack.headers(), requests, out)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(out, ignore_errors=True)


def summary(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    return 0


def count_redis(requests: int) -> int:
    """redis-server's instructions per metered request (admission and settlement scripts,
    with the protocol work around them), the candidate serving ``requests`` requests."""
    out = Path(tempfile.mkdtemp(prefix="eup-callgrind-"))
    server = RedisServer(prefix=(*CALLGRIND, f"--callgrind-out-file={out}/cg.redis"))
    stack = Stack(workers=1, redis_server=server)
    try:
        url = stack.url(stack.cand_port)
        asyncio.run(sequential(url, stack.headers(), json.dumps(SMALL).encode(), 50))
        assert server.proc is not None
        return measured(url, stack.headers(), requests, out, str(server.proc.pid))
    finally:
        stack.stop()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "instructions.json"))
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    uvloop.install()
    stack = Stack(workers=1)
    try:
        result = {name: count(stack, name, args.requests) for name in ("b_bare", "c_candidate")}
    finally:
        stack.stop()
    result["added_by_metering"] = result["c_candidate"] - result["b_bare"]
    result["redis_per_metered_request"] = count_redis(args.requests)
    text = json.dumps({"instructions_per_request": result, "requests": args.requests}, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
