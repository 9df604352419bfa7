"""Baseline (b): a bare aiohttp pass-through proxy with no metering — the limit of our stack.

Same framework, same upstream client settings and the same chunk-by-chunk streaming as the
candidate, minus authentication, admission, settlement and metrics.

    python bench/passthrough.py --port 9100 --upstream http://127.0.0.1:9000 [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import signal
import socket

import aiohttp
import uvloop
from aiohttp import web

DROP = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "accept-encoding",
    "content-encoding",
}
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session")


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
    upstream_url = request.app["upstream"] + request.path_qs
    async with request.app[SESSION].post(upstream_url, data=body, headers=headers) as up:
        out = {k: v for k, v in up.headers.items() if k.lower() not in DROP}
        if up.headers.get("content-type", "").startswith("text/event-stream"):
            resp = web.StreamResponse(status=up.status, headers=out)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        return web.Response(status=up.status, body=await up.read(), headers=out)


def serve(port: int, upstream: str) -> None:
    uvloop.install()

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app["upstream"] = upstream

        async def session(app: web.Application):  # type: ignore[no-untyped-def]
            timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)
            app[SESSION] = aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(limit=4096, limit_per_host=0)
            )
            yield
            await app[SESSION].close()

        app.cleanup_ctx.append(session)
        app.router.add_post("/v1/messages", forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=2048).start()
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    assert socket.SO_REUSEPORT
    procs = [mp.Process(target=serve, args=(a.port, a.upstream)) for _ in range(a.workers)]
    for proc in procs:
        proc.start()

    def stop(signum: int, frame: object) -> None:  # the workers go with the parent
        for proc in procs:
            proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    for proc in procs:
        proc.join()
