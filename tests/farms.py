"""A second, separate farm for tests that need other settings than the session's farm: its own
database on the suite's PostgreSQL server, and the broker and artifact store the test gives
it, so the session's workers and sweeper never see its jobs (nor it theirs)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import FarmProcess, api_process


def fresh_database(server_url: str, stack: ExitStack, prefix: str = "modelfarm_side") -> str:
    """A new database on the server of `server_url`, dropped when `stack` closes."""
    import psycopg

    from app.db import sqlalchemy_url

    name = f"{prefix}_{secrets.token_hex(4)}"
    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    base, _, query = sqlalchemy_url(server_url).partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


def run_cli(args: list[str], env: dict[str, str], prefix: Sequence[str] = ()) -> str:
    """A one-shot `modelfarm` command's output (`prefix` runs it elsewhere, as FarmProcess)."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@dataclass
class SideFarm:
    env: dict[str, str]
    url: str
    key: str
    worker: FarmProcess
    sweeper: FarmProcess | None

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )


@contextmanager
def side_farm(
    base_env: dict[str, str], overrides: dict[str, str], logs: Path, sweeper: bool = False
) -> Iterator[SideFarm]:
    """Migrate a fresh database, then run an API, a CPU worker (and a sweeper) on it."""
    with ExitStack() as stack:
        env = {**base_env, **overrides}
        env["MODELFARM_DATABASE_URL"] = fresh_database(base_env["MODELFARM_DATABASE_URL"], stack)
        full = {**os.environ, **env}
        run_cli(["migrate"], full)
        key = run_cli(["keys", "create", "--tenant", "side"], full).splitlines()[-1]
        logs.mkdir(parents=True, exist_ok=True)
        worker = FarmProcess.start(["worker", "--pool", "cpu"], env, logs / "worker.log")
        stack.callback(worker.stop)
        sweep = None
        if sweeper:
            sweep_env = {"MODELFARM_SWEEP_INTERVAL_SECONDS": "0.5", **env}
            sweep = FarmProcess.start(["sweeper"], sweep_env, logs / "sweeper.log")
            stack.callback(sweep.stop)
        url = stack.enter_context(api_process(env, logs / "api.log"))
        worker.wait_for_log("ready.")
        if sweep is not None:
            sweep.wait_for_log("sweeper started")
        yield SideFarm(env, url, key, worker, sweep)
