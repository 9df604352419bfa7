"""An embedded Redis for the demo (and the tests): a local ``redis-server`` on a free port
when the binary is installed, else an in-process fakeredis with Lua."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from proxy.storage.store import RedisClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process on a free port, in a temporary folder of its own."""

    def __init__(
        self,
        *extra: str,
        port: int | None = None,
        directory: Path | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = directory or Path(tempfile.mkdtemp(prefix="eup-redis-"))
        self.extra = extra
        self.prefix = prefix  # a command that runs the server (a profiler, in benchmarks)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--maxmemory-policy",
                "noeviction",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + (60 if self.prefix else 10)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class EmbeddedRedis:
    """What the demo runs on: ``kind`` is "redis-server" or "in-process"."""

    def __init__(self, prefer: str = "auto") -> None:
        self.server: RedisServer | None = None
        self.kind = "in-process"
        if prefer != "in-process" and shutil.which("redis-server"):
            self.server = RedisServer().start()
            self.kind = "redis-server"
        elif prefer == "redis-server":
            raise RuntimeError("redis-server is not installed")

    def client(self) -> RedisClient:
        if self.server is not None:
            return aioredis.Redis.from_url(self.server.url)
        import fakeredis  # the in-process Redis: only the demo on a bare machine needs it

        fake: RedisClient = fakeredis.FakeAsyncRedis()
        return fake

    def describe(self) -> str:
        if self.server is not None:
            return f"redis-server on {self.server.url}"
        return "in-process Redis (fakeredis with Lua)"

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
