"""Interrupting the suite cleans up: a SIGTERM to pytest stops the farm its fixtures started
(worker, sweeper, API, the throwaway PostgreSQL and Redis) and drops its database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import json, os, time

def test_waits_for_ever(sweeper, services):
    record = {"sweeper": sweeper.proc.pid, "database": services["MODELFARM_DATABASE_URL"]}
    with open(os.environ["INNER_RECORD"], "w") as f:
        json.dump(record, f)
    time.sleep(600)
"""


def test_a_sigterm_to_the_suite_leaves_no_farm_running(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER)
    record = tmp_path / "record.json"
    env = {**os.environ, "INNER_RECORD": str(record)}
    inner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_inner.py"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while not record.exists() and time.monotonic() < deadline and inner.poll() is None:
            time.sleep(0.2)
        assert record.exists(), (inner.stdout.read() if inner.poll() is not None else b"").decode()
        started = json.loads(record.read_text())
        # Everything the suite started: the sweeper (a session of its own) and, without
        # MODELFARM_TEST_* servers, Redis; PostgreSQL runs detached, its database is checked.
        farm = psutil.Process(inner.pid).children(recursive=True)
        assert started["sweeper"] in [p.pid for p in farm]
        inner.send_signal(signal.SIGTERM)
        output = inner.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if inner.poll() is None:
            inner.kill()
    gone, alive = psutil.wait_procs(farm, timeout=10)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}\n{output[-2000:]}"
    assert "KeyboardInterrupt" in output or "Interrupted" in output, output[-2000:]
    _assert_dropped(started["database"])


def _assert_dropped(url: str) -> None:
    import psycopg

    base, name = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)
    name = name.partition("?")[0]
    try:
        conn = psycopg.connect(f"{base}/postgres", connect_timeout=5)
    except psycopg.OperationalError:
        return  # the throwaway server itself is gone, with every database on it
    with conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None, f"database {name} was left behind"
