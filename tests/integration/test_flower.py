"""`modelfarm flower` as users expect it: a password, the job id in the task list, and its
history still there after a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.local.embedded import free_port
from tests.helpers import FarmProcess, submit, wait_done, wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = ("ops", "flower-test-pw")


def _start(env: dict[str, str], log: Path) -> FarmProcess:
    proc = FarmProcess.start(["flower"], env, log)
    url = f"http://127.0.0.1:{env['MODELFARM_FLOWER_PORT']}"
    wait_for_http(f"{url}/healthcheck", proc, timeout=90)  # the one page open to all
    return proc


def _poll_tasks(url: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=10).json()
        if any(ok(t) for t in tasks.values()):
            return True
        time.sleep(1)
    return False


def test_flower_needs_its_password_and_shows_job_ids_across_restarts(
    services: dict[str, str], tmp_path: Path, client: httpx.Client, cpu_worker: FarmProcess
) -> None:
    env = {
        **services,
        "MODELFARM_DATA_DIR": str(tmp_path / "data"),
        "MODELFARM_FLOWER_PORT": str(free_port()),
        "MODELFARM_FLOWER_BASIC_AUTH": ":".join(AUTH),
    }
    url = f"http://127.0.0.1:{env['MODELFARM_FLOWER_PORT']}"
    flower = _start(env, tmp_path / "flower.log")
    try:
        assert httpx.get(f"{url}/api/tasks", timeout=10).status_code == 401
        assert httpx.get(f"{url}/", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/tasks", auth=("ops", "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=10).status_code == 200
        tasks_page = httpx.get(f"{url}/tasks", auth=AUTH, timeout=10)
        assert tasks_page.status_code == 200 and 'data-column="args"' in tasks_page.text

        job = submit(client, {"model": "minilm", "input": {"items": [{"input": "flower"}]}})
        assert wait_done(client, job["id"])["status"] == "succeeded"

        def shows_job(task: dict[str, Any]) -> bool:
            return job["id"] in str(task.get("args")) and task.get("state") == "SUCCESS"

        assert _poll_tasks(url, shows_job), "the job's task never showed in Flower"
    finally:
        flower.stop()  # SIGTERM: Flower writes its state to DATA_DIR/flower.db as it stops
    assert list((tmp_path / "data").glob("flower.db*"))

    flower = _start(env, tmp_path / "flower-again.log")
    try:
        # No new task ran: what Flower shows now came from its saved state.
        assert _poll_tasks(url, shows_job, timeout=10), "Flower forgot its tasks on restart"
    finally:
        flower.stop()


def test_flower_refuses_an_open_address_without_a_password(
    services: dict[str, str], tmp_path: Path
) -> None:
    env = {**services, "MODELFARM_API_HOST": "0.0.0.0", "MODELFARM_FLOWER_PORT": str(free_port())}
    proc = FarmProcess.start(["flower"], env, tmp_path / "flower.log")
    assert proc.proc.wait(timeout=60) == 2
    assert "MODELFARM_FLOWER_BASIC_AUTH" in proc.output()
