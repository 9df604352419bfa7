"""What one org costs Redis: admit + settle pairs driven straight at Redis (no proxy, no
upstream), the memory a settled request holds during and after its replay window, and the same
pairs spread over the orgs of a 3-master Redis Cluster.

    .venv/bin/python bench/redis_ceiling.py [--quick] [--skip-cluster] [--skip-memory]

1. **Ceiling of one org on one Redis core.** One org of 20 members on one redis-server;
   ``--clients`` client processes, each with one auto-pipelined connection (the proxy's own
   ``Store``) and 64 loops of admit (by proxy key, as the proxy does) then settle. Reported:
   the pairs per second the clients reached, and Redis's own CPU time per pair (user +
   system, from /proc) — whence the ceiling ``1 / CPU per pair`` on one core, which does not
   depend on the clients keeping up (this machine has two cores: the clients share the second
   one). ``INFO commandstats`` gives the µs per script call beside it. In interleaved rounds
   against a baseline: the same Lua called script by script with EVALSHA (``Store(...,
   functions=False)``), where the candidate calls the library's functions with FCALL.
2. **Memory.** 100,000 pairs (``--memory-requests``), then ``used_memory`` per request: during
   the replay window (the operation records and the unsunk ledger), after a sink pass (the
   real ``LedgerSink`` into a throwaway PostgreSQL: the records only), and once the window
   has passed (what stays for good).
3. **Cluster.** 3 masters, 12 orgs spread over them by their hash tags, the same pairs: each
   master's pairs, CPU per pair and ceiling — through redis-py's cluster client, one call
   per round trip, then through the proxy's ``ClusterPipeliner`` (one auto-pipelined
   connection per master, as the proxy runs on a Cluster). The masters run with AOF on
   (``tests/cluster.py``), as a production Cluster would.

Prints one JSON object and writes it to bench/results/redis_ceiling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import redis
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from proxy.config import PolicyConfig, RedisConfig, TierConfig  # noqa: E402
from proxy.core.credentials import hash_secret  # noqa: E402
from proxy.storage.store import Store, make_client  # noqa: E402
from proxy.tools.embedded import RedisServer  # noqa: E402

MEMBERS = 20
LOOPS = 64  # concurrent admit+settle loops per client process
NANO = 10**9
TIERS = {"standard": TierConfig("standard", 10**6 * NANO, 10**7 * NANO)}  # never used up
USAGE = {"input_tokens": 12, "output_tokens": 50}


def key_of(org: str, member: str) -> str:
    return f"bench-key-{org}-{member}"


async def provision(url: str, orgs: list[str], cluster: bool) -> None:
    store = make_store(url, cluster, pipelining=False)
    try:
        for org in orgs:
            await store.create_org(org, {"plan": "team", "name": org}, "bench")
            fields = {}
            for i in range(MEMBERS):
                fields[f"m{i}|tier"] = "standard"
                fields[f"m{i}|role"] = "member"
            await store.update(org, "members", actor="bench", action="bench", fields=fields)
            for i in range(MEMBERS):
                await store.credential(
                    org,
                    "add",
                    "k",
                    member=f"m{i}",
                    cred_id=f"k{i}",
                    secret_hash=hash_secret(key_of(org, f"m{i}")),
                    actor="bench",
                )
    finally:
        await store.close()
        await store.client.aclose()


def make_store(
    url: str, cluster: bool, pipelining: bool, window_s: int = 3600, functions: bool = True
) -> Store:
    cfg = RedisConfig(url=url, cluster=cluster, max_connections=64)
    policy = PolicyConfig(reservation="estimate", replay_window_s=window_s)
    return Store(
        make_client(cfg),
        prefix="eup",
        tiers=TIERS,
        policy=policy,
        pipelining=pipelining,
        functions=functions,
    )


async def drive(
    url: str,
    cluster: bool,
    orgs: list[str],
    seconds: float,
    total: int,
    window_s: int,
    tag: str,
    pipelining: bool = True,
    functions: bool = True,
) -> int:
    """Admit + settle pairs until ``seconds`` pass or ``total`` pairs are done (0: no cap);
    the number of pairs. ``functions``: the scripts as a Redis Functions library (FCALL), or
    each on its own (EVALSHA: the baseline)."""
    store = make_store(url, cluster, pipelining=pipelining, window_s=window_s, functions=functions)
    done = 0
    deadline = time.monotonic() + seconds
    hashes = [[hash_secret(key_of(o, f"m{i}")) for i in range(MEMBERS)] for o in orgs]

    async def loop(n: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < deadline and (not total or done < total):
            done += 1
            org_i = (n + i) % len(orgs)
            rid = f"req-{tag}-{n}-{i}"
            i += 1
            adm = await store.admit(
                orgs[org_i],
                rid,
                who="k",
                credential=hashes[org_i][(n + i) % MEMBERS],
                max_cost=10**6,
                est_cost=10**5,
                lean=True,
            )
            assert adm.allowed
            reply, _ = store.settle(orgs[org_i], rid, cost=777_000, model="m", usage=USAGE)
            await reply

    try:
        await asyncio.gather(*(loop(n) for n in range(LOOPS)))
    finally:
        await store.close()
        await store.client.aclose()
    return done


def client_process(args: tuple[str, bool, list[str], float, int, int, str, bool, bool]) -> int:
    uvloop.install()
    return asyncio.run(drive(*args))


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def script_usec(port: int) -> tuple[int, float]:
    """(script calls, their µs) from INFO commandstats: FCALL and EVALSHA (either mode)."""
    with redis.Redis(port=port) as c:
        stats = c.info("commandstats")
    calls = usec = 0.0
    for name in ("cmdstat_fcall", "cmdstat_evalsha"):
        calls += stats.get(name, {}).get("calls", 0)
        usec += stats.get(name, {}).get("usec", 0)
    return int(calls), float(usec)


def run_clients(
    url: str,
    cluster: bool,
    orgs: list[str],
    seconds: float,
    clients: int,
    total: int = 0,
    window_s: int = 3600,
    pipelining: bool = True,
    functions: bool = True,
) -> tuple[int, float]:
    """(pairs done, wall seconds) of ``clients`` processes."""
    per = total // clients if total else 0
    tag = time.time_ns()
    jobs = [
        (url, cluster, orgs, seconds, per, window_s, f"{tag}-{c}", pipelining, functions)
        for c in range(clients)
    ]
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(clients) as pool:
        pairs = sum(pool.map(client_process, jobs))
    return pairs, time.perf_counter() - started


def one_core(seconds: float, clients: int, rounds: int = 3) -> dict[str, Any]:
    """The candidate (FCALL of the library) and the baseline (the same Lua, EVALSHA script by
    script), in interleaved rounds on one server; each mode's median round."""
    server = RedisServer().start()
    runs: dict[str, list[dict[str, Any]]] = {"evalsha": [], "functions": []}
    try:
        asyncio.run(provision(server.url, ["bench"], cluster=False))
        for functions in (False, True):  # warm-up
            run_clients(server.url, False, ["bench"], 2.0, clients, functions=functions)
        assert server.proc is not None
        for _ in range(rounds):
            for mode, functions in (("evalsha", False), ("functions", True)):
                with redis.Redis(port=server.port) as c:
                    c.config_resetstat()
                cpu0 = cpu_s(server.proc.pid)
                pairs, wall = run_clients(
                    server.url, False, ["bench"], seconds / rounds, clients, functions=functions
                )
                cpu = cpu_s(server.proc.pid) - cpu0
                calls, usec = script_usec(server.port)
                per_pair_us = cpu * 1e6 / pairs
                runs[mode].append(
                    {
                        "pairs": pairs,
                        "pairs_per_s_reached": round(pairs / wall),
                        "redis_cpu_us_per_pair": round(per_pair_us, 1),
                        "ceiling_pairs_per_s_one_core": round(1e6 / per_pair_us),
                        "script_call_us_each": round(usec / calls, 1) if calls else None,
                        "redis_busy_share": round(cpu / wall, 2),
                    }
                )
        with redis.Redis(port=server.port) as c:
            live = c.zcard("eup:{bench}:reserved")
    finally:
        server.cleanup()

    def median(mode: str) -> dict[str, Any]:
        ordered = sorted(runs[mode], key=lambda r: r["redis_cpu_us_per_pair"])
        return ordered[len(ordered) // 2]

    candidate, baseline = median("functions"), median("evalsha")
    return {
        **candidate,
        "due_entries_after": live,
        "baseline_evalsha": baseline,
        "cpu_per_pair_vs_baseline": round(
            candidate["redis_cpu_us_per_pair"] / baseline["redis_cpu_us_per_pair"], 3
        ),
        "rounds": runs,
    }


def used_memory(port: int) -> int:
    with redis.Redis(port=port) as c:
        return int(c.info("memory")["used_memory"])


async def sink_pass(redis_url: str, pg_url: str) -> tuple[int, int]:
    """(entries moved into PostgreSQL, bytes of the ledger table with its indexes)."""
    from proxy.ledger.db import LedgerDB
    from proxy.ledger.sink import LedgerSink

    store = make_store(redis_url, False, pipelining=False)
    db = await LedgerDB.connect(pg_url)
    try:
        await db.migrate()
        result = await LedgerSink(store, db, batch=2000).drain()
        await db.pool.execute("VACUUM ANALYZE ledger_entries")
        size = int(await db.pool.fetchval("SELECT pg_total_relation_size('ledger_entries')"))
    finally:
        await db.close()
        await store.close()
        await store.client.aclose()
    return sum(d.written for d in result.values()), size


def memory(requests: int, clients: int, window_s: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.servers import PostgresServer

    server = RedisServer().start()
    pg = PostgresServer().start()
    try:
        asyncio.run(provision(server.url, ["bench"], cluster=False))
        with redis.Redis(port=server.port) as c:
            c.execute_command("MEMORY", "PURGE")
        base = used_memory(server.port)
        pairs, _ = run_clients(
            server.url, False, ["bench"], 3600, clients, total=requests, window_s=window_s
        )
        started = time.monotonic()
        during = used_memory(server.port) - base
        sunk, pg_bytes = asyncio.run(sink_pass(server.url, pg.url))
        after_sink = used_memory(server.port) - base
        # the records expire on their own (active expiry) once the window has passed
        while time.monotonic() - started < window_s + 1:
            time.sleep(0.5)
        with redis.Redis(port=server.port) as c:
            for _ in range(200):
                if c.dbsize() <= 4:  # org, members, creds, ledger (the orgs set: 5)
                    break
                time.sleep(0.2)
            keys = c.dbsize()
            c.execute_command("MEMORY", "PURGE")
        after = used_memory(server.port) - base
    finally:
        server.cleanup()
        pg.cleanup()
    return {
        "requests": pairs,
        "sunk": sunk,
        "window_s": window_s,
        "bytes_per_request_during_window": round(during / pairs, 1),
        "bytes_per_request_during_window_after_sink": round(after_sink / pairs, 1),
        "bytes_after_window_and_sink": after,
        "bytes_per_request_after_window_and_sink": round(after / pairs, 2),
        "keys_left": keys,
        "postgres_bytes_per_ledger_row": round(pg_bytes / max(sunk, 1), 1),
    }


def cluster(seconds: float, clients: int) -> dict[str, Any]:
    from redis.crc import key_slot

    sys.path.insert(0, str(ROOT / "tests"))
    from tests.cluster import RedisCluster

    c = RedisCluster().start()
    try:
        ranges: list[tuple[int, int, int]] = []  # (first slot, last slot, node index)
        with redis.Redis(port=c.nodes[0].port) as r:
            for first, last, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                port = int(master[1])
                idx = next(i for i, n in enumerate(c.nodes) if n.port == port)
                ranges.append((int(first), int(last), idx))

        def node_of(org: str) -> int:
            slot = key_slot(f"eup:{{{org}}}:org".encode())
            return next(i for a, b, i in ranges if a <= slot <= b)

        orgs: list[str] = []
        per_node = [0] * len(c.nodes)
        i = 0
        while min(per_node) < 4:  # 4 orgs on each master
            org = f"org{i}"
            i += 1
            n = node_of(org)
            if per_node[n] < 4:
                per_node[n] += 1
                orgs.append(org)
        asyncio.run(provision(c.url, orgs, cluster=True))
        pids = [n.proc.pid for n in c.nodes if n.proc is not None]

        def measured(pipelining: bool) -> dict[str, Any]:
            run_clients(c.url, True, orgs, 2.0, clients, pipelining=pipelining)  # warm-up
            for n in c.nodes:
                with redis.Redis(port=n.port) as r:
                    r.config_resetstat()
            cpu0 = [cpu_s(p) for p in pids]
            pairs, wall = run_clients(c.url, True, orgs, seconds, clients, pipelining=pipelining)
            cpu = [cpu_s(p) - c0 for p, c0 in zip(pids, cpu0, strict=True)]
            masters = []
            for idx, n in enumerate(c.nodes):
                calls, usec = script_usec(n.port)
                node_pairs = max(calls // 2, 1)
                masters.append(
                    {
                        "orgs": per_node[idx],
                        "pairs": node_pairs,
                        "redis_cpu_us_per_pair": round(cpu[idx] * 1e6 / node_pairs, 1),
                        "ceiling_pairs_per_s_one_core": round(node_pairs / max(cpu[idx], 1e-9)),
                        "script_call_us_each": round(usec / calls, 1) if calls else None,
                    }
                )
            return {
                "pairs": pairs,
                "pairs_per_s_reached": round(pairs / wall),
                "masters": masters,
                "ceiling_pairs_per_s_all_masters": sum(
                    m["ceiling_pairs_per_s_one_core"] for m in masters
                ),
            }

        # redis-py's calls one by one, then the proxy's ClusterPipeliner (one multiplexed
        # connection per master)
        result = {"one_by_one": measured(False), "pipelined": measured(True)}
    finally:
        c.cleanup()
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--memory-requests", type=int, default=100_000)
    p.add_argument("--window-s", type=int, default=30)
    p.add_argument("--skip-cluster", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "redis_ceiling.json"))
    args = p.parse_args()
    seconds = 3.0 if args.quick else 10.0
    result: dict[str, Any] = {"one_core": one_core(seconds, args.clients)}
    print(json.dumps(result, indent=2), flush=True)
    if not args.skip_memory:
        n = 10_000 if args.quick else args.memory_requests
        result["memory"] = memory(n, args.clients, args.window_s)
        print(json.dumps(result["memory"], indent=2), flush=True)
    if not args.skip_cluster:
        result["cluster"] = cluster(seconds, args.clients)
    text = json.dumps(result, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
