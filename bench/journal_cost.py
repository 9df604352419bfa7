"""What recording requests in flight costs (the journal that lets a killed worker's requests
be charged): the same candidate with ``policy.journal_in_flight`` on (c) and off (c0), both
with two workers, side by side in one run.

    .venv/bin/python bench/journal_cost.py [--rounds 15] [--seconds 3]

wrk at c=16 in interleaved rounds, alternating order (c, c0, c0, c, ...), on the benchmark's
small JSON request and on streams of 10 events (where the journal writes: a request's record
with its first events, its progress each loop turn, its end). Per round the ratio of (c)'s
RPS to (c0)'s; the median of those paired ratios is the throughput the records keep, and one
less it is their cost (the issue's bound: at most 2 % at c=16). Beside it, the same for the
proxy's own CPU time per request (its workers, from /proc): the records cost CPU and nothing
else, and that ratio moves less from round to round than RPS on a shared machine. Writes
bench/results/journal_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, OPERATOR, ROOT, Stack, children, cpu_of, free_port, wait_http, wrk

STREAM_HEADERS = {"x-mock-events": "10", "x-mock-output-tokens": "100"}


def candidate_without_records(stack: Stack) -> tuple[str, int]:
    """A second candidate on the same Redis and mock, recording no request in flight."""
    config = Path(tempfile.mkdtemp(prefix="eup-bench-")) / "config.toml"
    text = (ROOT / "bench" / "config.toml").read_text()
    config.write_text(text.replace("[policy]\n", "[policy]\njournal_in_flight = false\n", 1))
    port = free_port()
    env = {
        "REDIS_URL": stack.redis.url,
        "OPERATOR_TOKEN": OPERATOR,
        "UPSTREAM_URL": stack.url(stack.mock_port),
        "UPSTREAM_API_KEY": "bench",
        "PYTHONWARNINGS": "ignore",
    }
    import os

    proc = stack._start(
        [str(BIN), "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        env={**os.environ, **env},
        cwd=tempfile.mkdtemp(prefix="eup-journal-"),
    )
    url = stack.url(port)
    wait_http(url + "/healthz")
    return url, proc.pid


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "journal_cost.json"))
    args = p.parse_args()
    stack = Stack(workers=2)
    try:
        url0, pid0 = candidate_without_records(stack)
        targets = {"c": stack.url(stack.cand_port), "c0": url0}
        pids = {"c": children(stack.cand.pid), "c0": children(pid0)}
        result: dict[str, Any] = {}
        for kind, extra in (("json", {}), ("stream", STREAM_HEADERS)):
            headers = {**stack.headers(), **extra}
            body_kind = "stream" if extra else "json"
            runs: dict[str, list[float]] = {"c": [], "c0": []}
            ratios, cpu_ratios = [], []
            for i in range(args.rounds):
                order = ["c", "c0"] if i % 2 == 0 else ["c0", "c"]
                rps, cpu = {}, {}
                for name in order:
                    before = cpu_of(pids[name])
                    out = wrk(
                        targets[name], headers, 16, args.seconds, stream=body_kind == "stream"
                    )
                    assert out["non_2xx"] == 0, out
                    rps[name] = out["rps"]
                    cpu[name] = (cpu_of(pids[name]) - before) / max(out["requests"], 1)
                    runs[name].append(out["rps"])
                ratios.append(rps["c"] / rps["c0"])
                cpu_ratios.append(cpu["c"] / cpu["c0"])
            median = statistics.median(ratios)
            cpu_median = statistics.median(cpu_ratios)
            result[kind] = {
                "rps_with_records": runs["c"],
                "rps_without": runs["c0"],
                "ratio_each_round": [round(r, 3) for r in ratios],
                "median_ratio": round(median, 3),
                "cost_pct": round((1 - median) * 100, 1),
                "proxy_cpu_ratio_each_round": [round(r, 3) for r in cpu_ratios],
                "proxy_cpu_median_ratio": round(cpu_median, 3),
                "proxy_cpu_cost_pct": round((cpu_median - 1) * 100, 1),
            }
            print(kind, json.dumps(result[kind]), flush=True)
    finally:
        stack.stop()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
