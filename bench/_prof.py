"""Redis instructions per admission and per settlement, counted by callgrind: the proxy's
``Store`` drives admit then settle, one at a time, for one org of 20 members at a
redis-server run under valgrind — on included usage and on extra usage (every member's seat
used up). Exact from run to run, so one script change can be weighed on its own.

    .venv/bin/python bench/script_instructions.py [--requests 200]

Prints one JSON object and writes it to bench/results/script_instructions.json; takes about a
minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from redis_ceiling import MEMBERS, USAGE, key_of, make_store, provision  # noqa: E402

from proxy.core.credentials import hash_secret  # noqa: E402
from proxy.tools.embedded import RedisServer  # noqa: E402

CALLGRIND = ("valgrind", "--tool=callgrind", "--instr-atstart=no")


def last_dump(folder: Path, pid: str) -> int:
    """Instructions since the previous dump (callgrind zeroes its counters at each dump)."""
    subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
    time.sleep(0.3)
    dumps = sorted(folder.glob("cg.*"), key=lambda p: int(p.name.rsplit(".", 1)[-1]))
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    return 0


def measure(mode: str, n: int) -> dict[str, int]:
    folder = Path(tempfile.mkdtemp(prefix="eup-callgrind-"))
    server = RedisServer(prefix=(*CALLGRIND, f"--callgrind-out-file={folder}/cg")).start()
    assert server.proc is not None
    pid = str(server.proc.pid)

    async def run() -> dict[str, int]:
        await provision(server.url, ["bench"], cluster=False)
        store = make_store(server.url, False, pipelining=False)
        if mode == "extra_usage":
            await store.client.hset(
                "eup:{bench}:org", mapping={"eu_on": "1", "balance": str(10**15)}
            )
            ends = {f"m{i}|s_end": "9999999999" for i in range(MEMBERS)}
            used = {f"m{i}|s_used": str(10**30) for i in range(MEMBERS)}
            await store.client.hset("eup:{bench}:members", mapping={**ends, **used})
        key = hash_secret(key_of("bench", "m3"))

        async def admits(tag: str, count: int) -> None:
            for i in range(count):
                a = await store.admit(
                    "bench",
                    f"{tag}-{i}",
                    who="k",
                    credential=key,
                    max_cost=10**6,
                    est_cost=10**5,
                    lean=True,
                )
                assert a["mode"] == mode, a.raw

        async def settles(tag: str, count: int) -> None:
            for i in range(count):
                reply, _ = store.settle(
                    "bench", f"{tag}-{i}", cost=777_000, model="claude-sonnet-4-5", usage=USAGE
                )
                await reply

        try:
            await admits("warm", 30)
            await settles("warm", 30)
            on = ["callgrind_control", "-i", "on", pid]
            await asyncio.to_thread(subprocess.run, on, capture_output=True, check=True)
            await asyncio.to_thread(last_dump, folder, pid)
            await admits("m", n)
            admit = (await asyncio.to_thread(last_dump, folder, pid)) // n
            await settles("m", n)
            settle = (await asyncio.to_thread(last_dump, folder, pid)) // n
        finally:
            await store.close()
            await store.client.aclose()
        return {"admit": admit, "settle": settle, "pair": admit + settle}

    try:
        return asyncio.run(run())
    finally:
        server.cleanup()
        print("FOLDER", folder)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--out", default="/tmp/si.json")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    result = {mode: measure(mode, args.requests) for mode in ("included",)}
    text = json.dumps({"redis_instructions": result, "requests": args.requests}, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
