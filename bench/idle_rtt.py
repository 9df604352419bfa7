"""Round-trip time to a redis-server after it has been idle, on this machine.

    .venv/bin/python bench/idle_rtt.py

At concurrency 1 every hop of a request (client → proxy → Redis → proxy → upstream …) meets
a process that has been waiting: this prints the PING round trip back to back and after idle
gaps of 0.2, 1 and 3 ms, the gap spent busy (this process keeps its core) or asleep.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy.tools.embedded import RedisServer

PING = b"*1\r\n$4\r\nPING\r\n"


async def probe(port: int, rounds: int = 1000) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: dict[str, float] = {}
    for gap, how in [(0.0, "busy"), (0.0002, "busy"), (0.001, "busy"), (0.003, "busy")] + [
        (g, "asleep") for g in (0.0002, 0.001, 0.003)
    ]:
        lat = []
        for _ in range(rounds):
            if how == "asleep":
                await asyncio.sleep(gap)
            else:
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < gap:
                    pass
            t = time.perf_counter()
            writer.write(PING)
            await reader.readuntil(b"\r\n")
            lat.append((time.perf_counter() - t) * 1e6)
        out[f"{how} gap {gap * 1000:g} ms: PING p50 us"] = round(statistics.median(lat))
    writer.close()
    return out


def main() -> None:
    uvloop.install()
    server = RedisServer().start()
    try:
        for line, value in asyncio.run(probe(server.port)).items():
            print(f"{line} {value}")
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
