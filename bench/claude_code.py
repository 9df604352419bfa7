"""Claude Code against the proxy when it must refuse: how long until it stops, and what it
prints. Real processes on loopback: redis-server, the built-in mock of the Messages API, the
proxy (`extra-usage-proxy serve`), and Claude Code in print mode.

    .venv/bin/python bench/claude_code.py [--claude PATH]

Claude Code comes from the npm registry (`npm install @anthropic-ai/claude-code@2.1.332`
in a folder of your choice, then `node node_modules/@anthropic-ai/claude-code/install.cjs`
when npm skipped its postinstall); pass its `claude` with `--claude`. Scenarios: a revoked
key, an unknown key, Redis down (fail_closed), Redis hung (SIGSTOP). Each prints the seconds
until Claude Code exited and the first line it printed; the target is under 5 s each.
Writes bench/results/claude_code.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, ROOT, RedisServer, free_port, wait_http

OPERATOR = "bench-operator"


def call(url: str, method: str, path: str, body: object | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path,
        data=data,
        method=method,
        headers={"authorization": f"Bearer {OPERATOR}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        doc: dict[str, object] = json.loads(r.read() or b"{}")
        return doc


def claude(claude_bin: str, base_url: str, key: str) -> tuple[float, str, int]:
    """(seconds, what it printed, exit status) of one print-mode prompt."""
    home = Path(tempfile.mkdtemp(prefix="eup-cc-home-"))
    (home / ".claude.json").write_text(json.dumps({"hasCompletedOnboarding": True}))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    started = time.monotonic()
    done = subprocess.run(
        [claude_bin, "-p", "say hello"], env=env, capture_output=True, text=True, timeout=400
    )
    elapsed = time.monotonic() - started
    printed = (done.stdout + done.stderr).strip().splitlines()
    return elapsed, printed[0] if printed else "", done.returncode


def refusals(claude_bin: str, url: str, redis: RedisServer) -> list[dict[str, object]]:
    """The refusals a member acts on, as Claude Code prints them: consent needed, a strict
    maximum that does not fit, a member limit reached (Enterprise, requests on)."""
    import redis as redis_py

    call(url, "POST", "/admin/v1/orgs", {"id": "ent", "name": "Ent", "plan": "enterprise"})
    settings = {"enabled": True, "reservation_policy": "strict"}
    call(url, "PATCH", "/admin/v1/orgs/ent/extra-usage", settings)
    out = []
    direct = redis_py.Redis.from_url(redis.url)
    for member, setup in (
        ("cora", {}),  # consent required (Enterprise's default)
        ("stu", {"consent": "1", "limit": "500000000"}),  # $0.50 left: a strict maximum
        ("mel", {"consent": "1", "limit": "0"}),
    ):
        call(
            url,
            "PUT",
            f"/admin/v1/orgs/ent/members/{member}",
            {"role": "member", "tier": "standard"},
        )
        key = str(call(url, "POST", f"/admin/v1/orgs/ent/members/{member}/keys")["key"])
        # the seat used up, so that extra usage decides
        fields = {"s_end": "9999999999", "s_used": str(10**15), **setup}
        direct.hset("eup:{ent}:members", mapping={f"{member}|{f}": v for f, v in fields.items()})
        s, printed, code = claude(claude_bin, url, key)
        out.append({"scenario": f"refused: {member}", "s": s, "printed": printed, "exit": code})
    direct.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--claude", default="claude")
    args = p.parse_args()
    redis = RedisServer().start()
    mock_port, port = free_port(), free_port()
    procs = [subprocess.Popen([str(BIN), "mock-upstream", "--port", str(mock_port)])]
    env = {
        **os.environ,
        "REDIS_URL": redis.url,
        "OPERATOR_TOKEN": OPERATOR,
        "UPSTREAM_URL": f"http://127.0.0.1:{mock_port}",
        "UPSTREAM_API_KEY": "bench",
    }
    config = ROOT / "bench" / "config.toml"
    procs.append(
        subprocess.Popen(
            [str(BIN), "serve", "--config", str(config), "--port", str(port)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
    )
    url = f"http://127.0.0.1:{port}"
    results: list[dict[str, object]] = []
    try:
        wait_http(url + "/healthz")
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        call(url, "POST", "/admin/v1/orgs", {"id": "acme", "name": "Acme", "plan": "team"})
        call(url, "PUT", "/admin/v1/orgs/acme/members/ann", {"role": "member", "tier": "standard"})
        issued = call(url, "POST", "/admin/v1/orgs/acme/members/ann/keys")
        key = str(issued["key"])
        ok = claude(args.claude, url, key)
        results.append(
            {
                "scenario": "a working key (reference)",
                **dict(zip(("s", "printed", "exit"), ok, strict=True)),
            }
        )
        call(url, "DELETE", f"/admin/v1/orgs/acme/members/ann/keys/{issued['key_id']}")
        for name, k in (("revoked key", key), ("unknown key", key[:-8] + "00000000")):
            s, printed, code = claude(args.claude, url, k)
            results.append({"scenario": name, "s": s, "printed": printed, "exit": code})
        fresh = str(call(url, "POST", "/admin/v1/orgs/acme/members/ann/keys")["key"])
        results += refusals(args.claude, url, redis)
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)
        s, printed, code = claude(args.claude, url, fresh)
        results.append(
            {"scenario": "Redis hung (SIGSTOP)", "s": s, "printed": printed, "exit": code}
        )
        os.kill(redis.proc.pid, signal.SIGCONT)
        redis.stop()
        s, printed, code = claude(args.claude, url, fresh)
        results.append({"scenario": "Redis down", "s": s, "printed": printed, "exit": code})
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        redis.cleanup()
    for r in results:
        seconds, printed = float(str(r["s"])), str(r["printed"])[:160]
        print(f"{r['scenario']:28} {seconds:6.2f} s  exit {r['exit']}  {printed}")
    out = ROOT / "bench" / "results" / "claude_code.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
