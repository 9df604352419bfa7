"""Real servers for the tests: redis-server processes on free ports (see proxy.tools.embedded)."""

from __future__ import annotations

import subprocess

from proxy.tools.embedded import RedisServer, free_port

__all__ = ["PostgresServer", "RedisServer", "free_port"]


class PostgresServer:
    """A throwaway PostgreSQL: initdb into a temporary folder, a postgres on a free port."""

    def __init__(self) -> None:
        import glob
        import os
        import tempfile
        from pathlib import Path

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(bins[-1]).parent
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eup-pg-"))
        # initdb refuses to run as root: run the server as the postgres user then
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            import shutil as sh

            sh.chown(self.dir, "postgres", "postgres")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/extra_usage"

    def start(self) -> PostgresServer:

        data = self.dir / "data"
        subprocess.run(
            [
                *self.as_user,
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        self._run()
        subprocess.run(
            [
                str(self.bin / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "extra_usage",
            ],
            check=True,
            capture_output=True,
        )
        return self

    def _run(self) -> None:
        """The postgres process on the data folder, and wait until it answers."""
        import time

        self.proc = subprocess.Popen(
            [
                *self.as_user,
                str(self.bin / "postgres"),
                "-D",
                str(self.dir / "data"),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("postgres did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server at once, its clients cut off (its data stays): an outage, until
        ``resume``."""
        subprocess.run(
            [
                *self.as_user,
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.dir / "data"),
                "stop",
                "-m",
                "fast",
                "-w",
            ],
            check=True,
            capture_output=True,
        )
        if self.proc is not None:
            self.proc.wait(20)
            self.proc = None

    def resume(self) -> None:
        self._run()

    def cleanup(self) -> None:
        import shutil as sh

        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None
        sh.rmtree(self.dir, ignore_errors=True)
