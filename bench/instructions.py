"""Instructions per request, counted by valgrind's callgrind: the bare pass-through (b) and the
candidate (c), each serving N sequential small requests on loopback after a warm-up.

    .venv/bin/python bench/instructions.py [--requests 300]

Timings on a shared two-core machine move by ±15 % from run to run; an instruction count does
not (the same binary, inputs and environment give the same total). Only user-space work of
the proxy process is counted — not the kernel's share of its system calls, nor Redis, the
mock or the client. Prints one JSON object and writes it to
bench/results/instructions.json; takes about a minute.
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
from run import BIN, OPERATOR, ROOT, SMALL, Stack, free_port, sequential


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
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",  # nothing counted until the warm-up is over
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
        subprocess.run(["callgrind_control", "-i", "on"], capture_output=True, check=True)
        asyncio.run(sequential(url, stack.headers(), body, requests))
        subprocess.run(["callgrind_control", "-d"], capture_output=True, check=True)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    total = 0
    for dump in out.glob("cg.*.1"):  # the dump taken after the measured requests
        for line in dump.read_text().splitlines():
            if line.startswith("summary:"):
                total += int(line.split()[1])
    shutil.rmtree(out, ignore_errors=True)
    return total // (requests + 20)  # sequential() sends 20 warm-up requests of its own


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
    text = json.dumps({"instructions_per_request": result, "requests": args.requests}, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
