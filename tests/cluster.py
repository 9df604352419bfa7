"""A real 3-master Redis Cluster on free ports, for the cluster tests."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

import redis

from proxy.tools.embedded import RedisServer

CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--appendonly",
    "yes",
)


def cluster_port() -> int:
    """A free port p with p + 10000 free too (the cluster bus), at most 55535."""
    while True:
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


class RedisCluster:
    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisServer(*CLUSTER_ARGS, port=cluster_port()) for _ in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ok = True
            for node in self.nodes:
                try:
                    with redis.Redis(port=node.port) as c:
                        info = c.execute_command("CLUSTER", "INFO")
                        text = info.decode() if isinstance(info, bytes) else str(info)
                        ok = ok and "cluster_state:ok" in text
                except redis.RedisError:
                    ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def restart(self, index: int) -> None:
        """Kill a master and start it again on the same port and folder (it rejoins)."""
        old = self.nodes[index]
        old.kill()
        node = RedisServer(*CLUSTER_ARGS, port=old.port, directory=old.dir)
        self.nodes[index] = node.start()
        self.wait_ok()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
