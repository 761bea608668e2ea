"""The Procfile under honcho, on a fresh empty database and a machine without a GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil
import pytest

from app.local.embedded import free_port
from tests.farms import fresh_database
from tests.helpers import submit, wait_done, wait_for_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def empty_database(services: dict[str, str]) -> Iterator[str]:
    """A database with no schema at all: the Procfile's processes must migrate it."""
    with ExitStack() as stack:
        yield fresh_database(services["MODELFARM_DATABASE_URL"], stack)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_procfile_runs_under_honcho_and_serves_a_job(
    tmp_path: Path, services: dict[str, str], empty_database: str
) -> None:
    env = {
        **os.environ,
        **services,
        "MODELFARM_DATABASE_URL": empty_database,
        "MODELFARM_DATA_DIR": str(tmp_path / "data"),
        "MODELFARM_API_PORT": str(free_port()),
        "MODELFARM_FLOWER_PORT": str(free_port()),
        "MODELFARM_API_WORKERS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # this test's machine has no GPU, whatever it really has
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [str(BIN / "honcho"), "start", "--no-colour", "-f", str(ROOT / "Procfile")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        api = f"http://127.0.0.1:{env['MODELFARM_API_PORT']}"
        deadline = time.monotonic() + 240
        while not _answers(f"{api}/readyz"):  # the API migrated the empty database
            assert honcho.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        wait_for_http(f"http://127.0.0.1:{env['MODELFARM_FLOWER_PORT']}/healthcheck", timeout=60)
        key = subprocess.run(
            [str(BIN / "modelfarm"), "keys", "create", "--tenant", "procfile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
        with httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            items = [{"custom_id": str(i), "input": f"procfile {i}"} for i in range(4)]
            job = submit(client, {"model": "minilm", "input": {"items": items}})
            done = wait_done(client, job["id"], timeout=240)
        assert done["status"] == "succeeded" and done["counts"]["succeeded"] == 4, done
        assert done["queue"] == "cpu"  # `auto`: the idle GPU line beats no heartbeat

        text = log.read_text()
        assert "no GPU visible: the GPU pool idles" in text
        assert text.count("database schema is up to date") == 5  # api, 3 workers, sweeper
        assert honcho.poll() is None, text[-4000:]  # no line ended
        tree = psutil.Process(honcho.pid).children(recursive=True)
    finally:
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)  # honcho passes it on to every line
        try:
            honcho.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, [p.pid for p in alive]
