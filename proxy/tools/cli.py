"""Command line: ``extra-usage-proxy serve | check-config | ...``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.config import Config, ConfigError, load_config, missing_secrets, secret_files
from proxy.http.app import WORKERS_FILE, build_app, metrics_app
from proxy.http.appkeys import DRAINING
from proxy.http.server import ProxyRunner
from proxy.obs.logs import setup_logging
from proxy.storage.store import Store

log = logging.getLogger("proxy")


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class StartupError(Exception):
    """A reason the proxy cannot start, said in one line (no traceback)."""


async def _serve(config: Config, *, reuse_port: bool) -> None:
    app = build_app(config)
    runner = ProxyRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.server.shutdown_grace_s,
        header_timeout_s=config.server.header_timeout_s,
    )
    await runner.setup()
    server = config.server
    try:
        await web.TCPSite(
            runner, server.host, server.port, reuse_port=reuse_port or None, backlog=2048
        ).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {server.host}:{server.port}: {exc.strerror}") from exc
    metrics_runner = None
    if server.metrics_port:
        metrics_runner = ProxyRunner(metrics_app(app), access_log=None, handle_signals=False)
        await metrics_runner.setup()
        await web.TCPSite(
            metrics_runner, server.host, server.metrics_port, reuse_port=reuse_port or None
        ).start()
    log.info(
        "serving",
        extra={
            "fields": {"host": server.host, "port": server.port, "upstream": config.upstream.url}
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # the drain: readiness answers 503 at once, so that the load balancer stops sending; the
    # listener stays open meanwhile (requests still in its path are served) ...
    app[DRAINING].set()
    log.info(
        "draining: readiness is 503; listening for drain_delay_s more",
        extra={"fields": {"drain_delay_s": server.drain_delay_s}},
    )
    await asyncio.sleep(server.drain_delay_s)
    # ... then it stops listening, lets open requests and streams finish for up to
    # shutdown_grace_s, cancels the rest (their handlers still settle), and closes Redis and
    # the upstream — bounded as a whole, so that the process is gone within the pod's grace
    log.info(
        "shutting down: letting open streams finish",
        extra={"fields": {"grace_s": server.shutdown_grace_s}},
    )
    try:
        async with asyncio.timeout(server.shutdown_grace_s + 2):
            await runner.cleanup()
            if metrics_runner is not None:
                await metrics_runner.cleanup()
    except TimeoutError:
        log.warning("shutdown did not finish within the grace: exiting (the journal recovers)")
    log.info("stopped")


def _serve_worker(path: str | None, host: str | None, port: int | None) -> None:
    setup_logging()
    _install_uvloop()
    config = _with_listen(load_config(path), host, port)
    try:
        asyncio.run(_serve(config, reuse_port=True))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        # secrets mounted as files (NAME_FILE) are read once, here: orgs' upstream credentials
        # are looked up in the environment when their requests come
        os.environ.update(secret_files(os.environ))
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = _with_listen(config, args.host, args.port)
    for missing in missing_secrets(config):
        print(f"warning: {missing}", file=sys.stderr)
    if args.workers <= 1:
        setup_logging()
        _install_uvloop()
        try:
            asyncio.run(_serve(config, reuse_port=False))
        except StartupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    return _run_workers(args)


def _with_listen(config: Config, host: str | None, port: int | None) -> Config:
    from dataclasses import replace

    server = config.server
    if host is not None:
        server = replace(server, host=host)
    if port is not None:
        server = replace(server, port=port)
    return replace(config, server=server)


def _run_workers(args: argparse.Namespace) -> int:
    """N processes on one port (SO_REUSEPORT), each with its own Redis pool, upstream session
    and scripts; metrics are shared through prometheus-client's multiprocess files.

    Supervised: a worker that dies is replaced within a second (counted in
    ``eup_worker_restarts_total``, logged), and readiness is 503 until it is back; SIGTERM
    and SIGINT reach every worker, every time, and the supervisor exits once all have."""
    import multiprocessing as mp
    import shutil
    import tempfile
    from multiprocessing.connection import wait

    from prometheus_client import Counter, multiprocess, values

    run_dir = tempfile.mkdtemp(prefix="eup-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = run_dir  # inherited by the spawned workers
    workers_file = Path(run_dir) / "workers"
    os.environ[WORKERS_FILE] = str(workers_file)
    setup_logging()
    ctx = mp.get_context("spawn")
    # counted in the workers' shared metric files (prometheus-client chose in-memory values
    # when it was imported, before the directory was set): /metrics sums it with theirs
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    restarts = Counter("eup_worker_restarts_total", "Workers that died and were replaced")
    expected = args.workers
    stopping: list[int] = []  # the signal received, once one is

    def spawn() -> Any:
        p = ctx.Process(target=_serve_worker, args=(args.config, args.host, args.port))
        p.start()
        return p

    def write_alive() -> None:
        alive = sum(1 for p in procs if p.is_alive())
        tmp = workers_file.with_suffix(".tmp")
        tmp.write_text(f"{alive} {expected}")
        tmp.replace(workers_file)

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    procs = [spawn() for _ in range(expected)]
    gone: set[Any] = set()  # dead workers already accounted for
    write_alive()
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    started = time.monotonic()
    code = 0
    try:
        while True:
            live = [p for p in procs if p.is_alive()]
            if stopping and not live:
                break
            wait([p.sentinel for p in live], timeout=1.0)
            for i, p in enumerate(procs):
                if p.is_alive() or p in gone:
                    continue
                gone.add(p)
                multiprocess.mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
                code = max(code, p.exitcode or 0)
                if stopping:
                    continue
                if p.exitcode == 2 and time.monotonic() - started < 10:
                    # it could not start (a port in use, a bad config): retrying cannot help
                    forward(signal.SIGTERM, None)
                    continue
                log.error(
                    "worker died: replacing it",
                    extra={"fields": {"worker": p.pid, "exitcode": p.exitcode}},
                )
                restarts.inc()
                procs[i] = spawn()
            write_alive()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if stopping and code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.file}: ok ({len(config.tiers)} tiers, "
        f"{len(config.prices.families)} price families, "
        f"reservation policy {config.policy.reservation}, fail mode {config.policy.fail_mode})"
    )
    for missing in missing_secrets(config):
        print(f"warning: {missing}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.tools.demo import run

    _install_uvloop()
    try:
        return asyncio.run(run(port=args.port, once=args.once, prefer=args.redis))
    except KeyboardInterrupt:
        return 0


def _config_or_exit(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_migrate(args: argparse.Namespace) -> int:
    from proxy.ledger.db import LedgerDB

    config = _config_or_exit(args.config)

    async def go() -> list[str]:
        db = await LedgerDB.connect(config.ledger.database_url)
        try:
            return await db.migrate()
        finally:
            await db.close()

    applied = asyncio.run(go())
    print(f"applied: {', '.join(applied)}" if applied else "schema up to date")
    return 0


def _store(config: Config) -> Store:
    """A store on its own client (the commands outside the proxy): closing it closes both."""
    from proxy.storage.store import make_client

    return Store(
        make_client(config.redis),
        prefix=config.redis.key_prefix,
        tiers=config.tiers,
        policy=config.policy,
        owns_client=True,
    )


def cmd_ledger_sink(args: argparse.Namespace) -> int:
    from proxy.ledger.sink import LedgerSink, connect_ledger
    from proxy.obs.metrics import SinkMetrics
    from proxy.tools.sink_health import serve_sink_metrics

    config = _config_or_exit(args.config)
    setup_logging()

    port = args.metrics_port if args.metrics_port is not None else config.ledger.metrics_port

    async def go() -> int:
        metrics = SinkMetrics()
        site = await serve_sink_metrics(metrics, config.server.host, port, args.interval)
        db = await connect_ledger(config.ledger.database_url, args.once, metrics)
        store = _store(config)
        try:
            sink = LedgerSink(
                store,
                db,
                consumer=args.consumer,
                claim_idle_ms=0 if args.once else 60_000,
                metrics=metrics,
            )
            result = await sink.run(once=args.once, interval_s=args.interval)
            for org, d in result.items():
                print(
                    f"{org}: written {d.written}, lag {d.lag}, pending {d.pending}"
                    + (f", dead letters {d.dead}" if d.dead else "")
                )
            return 0
        finally:
            await store.close()
            await db.close()
            if site is not None:
                await site.cleanup()

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from proxy.core.statements import current_period, report
    from proxy.ledger.db import LedgerDB
    from proxy.ledger.reconcile import Incomplete, reconcile, repair

    config = _config_or_exit(args.config)
    period = args.period or current_period(time.time())

    async def go() -> int:
        db = await LedgerDB.connect(config.ledger.database_url)
        store = _store(config)
        try:
            if args.repair:
                try:
                    diffs = await repair(store, db, args.org, period)
                except Incomplete as exc:
                    sys.stderr.write(f"reconcile: not repaired, nothing written: {exc}\n")
                    return 3
                sys.stdout.write(report(args.org, period, diffs).decode() + "\n")
                diffs = await reconcile(store, db, args.org, period)
            else:
                diffs = await reconcile(store, db, args.org, period)
                sys.stdout.write(report(args.org, period, diffs).decode() + "\n")
            return 0 if not diffs else 1
        finally:
            await store.close()
            await db.close()

    return asyncio.run(go())


def cmd_functions(args: argparse.Namespace) -> int:
    """The product's Redis Functions libraries: which are there, which this build calls, and
    (``--prune``) deleting the others once a rollout is over."""
    from redis.exceptions import RedisError

    config = _config_or_exit(args.config)

    async def go() -> int:
        store = _store(config)
        library = store.library
        try:
            if args.prune:
                for name in await library.prune():
                    sys.stdout.write(f"deleted {name}\n")
            for name in await library.libraries():
                mark = "  (this build)" if name == library.name else ""
                sys.stdout.write(f"{name}{mark}\n")
            return 0
        except RedisError as exc:
            sys.stderr.write(f"functions: Redis: {exc}\n")
            return 1
        finally:
            await store.close()

    return asyncio.run(go())


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    """The built-in mock of the Messages API, alone (benchmarks, browser tests, trying out)."""
    from aiohttp import web as aioweb

    from proxy.tools.mock_upstream import MockUpstream, build_mock_app

    _install_uvloop()
    aioweb.run_app(
        build_mock_app(MockUpstream(record=False)),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extra-usage-proxy",
        description="Extra usage enforcement proxy for Claude Team and Enterprise organizations.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--config", help="TOML config file (default: built-in defaults)")
    s.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    s.add_argument("--port", type=int, default=None, help="override server.port")
    s.add_argument("--host", default=None, help="override server.host (0.0.0.0 in a container)")
    s.set_defaults(func=cmd_serve)
    d = sub.add_parser("demo", help="the whole product on this machine, no Redis or key needed")
    d.add_argument("--once", action="store_true", help="exit after the scenario")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument(
        "--redis",
        choices=("auto", "redis-server", "in-process"),
        default="auto",
        help="embedded Redis: a local redis-server when installed, else in-process",
    )
    d.set_defaults(func=cmd_demo)
    m = sub.add_parser("migrate", help="apply the PostgreSQL schema of the durable ledger")
    m.add_argument("--config")
    m.set_defaults(func=cmd_migrate)
    k = sub.add_parser("ledger-sink", help="move the ledger streams into PostgreSQL")
    k.add_argument("--config")
    k.add_argument("--once", action="store_true", help="drain what is there and exit")
    k.add_argument("--consumer", default="sink-1", help="consumer name in the group")
    k.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    k.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /healthz on this port (default: ledger.metrics_port)",
    )
    k.set_defaults(func=cmd_ledger_sink)
    r = sub.add_parser("reconcile", help="Redis counters against the durable ledger")
    r.add_argument("org")
    r.add_argument("--config")
    r.add_argument("--period", help="YYYY-MM (default: the current month)")
    r.add_argument(
        "--repair", action="store_true", help="rewrite the derived counters from the ledger"
    )
    r.set_defaults(func=cmd_reconcile)
    f = sub.add_parser("functions", help="the proxy's Redis Functions libraries on Redis")
    f.add_argument("--config")
    f.add_argument("--prune", action="store_true", help="delete every library but this build's")
    f.set_defaults(func=cmd_functions)
    u = sub.add_parser("mock-upstream", help="run the built-in mock of the Messages API")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8089)
    u.set_defaults(func=cmd_mock_upstream)
    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
