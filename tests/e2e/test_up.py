"""`modelfarm up` on a clean data directory: embedded servers, every process, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.local.embedded import free_port
from app.local.procs import visible_gpus
from tests.helpers import FarmProcess, submit, wait_done, wait_for_http

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

URL_VARS = (
    "MODELFARM_DATABASE_URL",
    "MODELFARM_REDIS_URL",
    "MODELFARM_API_KEY",
    "MODELFARM_API_URL",
)


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    env.update(
        {
            "MODELFARM_DATA_DIR": str(data_dir),
            "MODELFARM_API_PORT": str(free_port()),
            "MODELFARM_FLOWER_PORT": str(free_port()),
            "HF_HUB_OFFLINE": "1",
            **extra,
        }
    )
    return env


def _start_up(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _wait_state(data_dir: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state_file = data_dir / "farm.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            if "api_key" in state:
                return state
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise TimeoutError(log.read_text())


def _poll(url: str, ok: Callable[[Any], bool], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(url, timeout=30).json()
        if ok(body) or time.monotonic() > deadline:
            return body if ok(body) else None
        time.sleep(1)


def _stop(up: subprocess.Popen[bytes]) -> None:
    """Ctrl-C first, so a failing test still leaves no farm process behind."""
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


def test_up_runs_the_farm_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "farm"
    # Flower's JSON API is closed unless asked for; the test reads it, so it asks.
    env = _env(data_dir, FLOWER_UNAUTHENTICATED_API="true")
    log = tmp_path / "up.log"
    up = _start_up(env, log)
    try:
        state = _wait_state(data_dir, up, log)
        assert state["database_url"] and state["redis_url"].startswith("redis://127.0.0.1:")
        api = f"http://127.0.0.1:{env['MODELFARM_API_PORT']}"
        wait_for_http(f"{api}/readyz", timeout=60)
        flower = f"http://127.0.0.1:{env['MODELFARM_FLOWER_PORT']}"
        wait_for_http(f"{flower}/healthcheck", timeout=60)

        # Another command with only the same DATA_DIR reaches the same farm and key.
        source = tmp_path / "in.jsonl"
        source.write_text(
            "".join(json.dumps({"custom_id": i, "input": f"text {i}"}) + "\n" for i in range(20))
        )
        cli_env = {k: v for k, v in env.items() if k != "MODELFARM_FLOWER_PORT"}
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "submit", str(source), "--model", "minilm", "--wait"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
        job = json.loads(done.stdout)
        assert job["counts"]["succeeded"] == 20

        # Flower sees the CPU worker and the job's task, named so the job id shows.
        # (Flower asks the workers live and may answer before they do: ask a few times.)
        workers = _poll(
            f"{flower}/api/workers?refresh=1", lambda w: any(name.startswith("cpu@") for name in w)
        )
        assert workers
        tasks = _poll(
            f"{flower}/api/tasks",
            lambda ts: any(
                t["name"] == "modelfarm.plan_job" and job["id"] in t["args"] for t in ts.values()
            ),
        )
        assert tasks

        tree = psutil.Process(up.pid).children(recursive=True)
        assert len(tree) >= 5  # api, worker (+ its pool child), sweeper, flower, redis-server
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, log.read_text()[-3000:]
        gone, alive = psutil.wait_procs([*tree], timeout=20)
        assert not alive, [p.info for p in alive]
        deadline = time.monotonic() + 20
        while psutil.pid_exists(postmaster) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not psutil.pid_exists(postmaster)
        assert "database_url" not in json.loads((data_dir / "farm.json").read_text())
    finally:
        _stop(up)


def test_up_with_urls_starts_no_embedded_server(tmp_path: Path, services: dict[str, str]) -> None:
    data_dir = tmp_path / "farm"
    env = _env(
        data_dir,
        MODELFARM_DATABASE_URL=services["MODELFARM_DATABASE_URL"],
        MODELFARM_REDIS_URL=services["MODELFARM_REDIS_URL"],
    )
    proc = FarmProcess.start(["up", "--no-flower"], env, tmp_path / "up.log")
    try:
        api = f"http://127.0.0.1:{env['MODELFARM_API_PORT']}"
        wait_for_http(f"{api}/readyz", proc, timeout=60)
        assert not (data_dir / "postgres").exists() and not (data_dir / "redis").exists()
        assert "embedded" not in proc.output()
        # No GPU here, so `up` runs no GPU pool: absent by choice, not a pool missing workers.
        if not visible_gpus():
            ready = httpx.get(f"{api}/readyz", timeout=10).json()
            assert ready["pools_absent"] == ["gpu"], ready
            assert "gpu" not in ready["pools_without_workers"], ready

        # A second `up` on the same directory (another port even) says at once who runs there
        # and ends, touching nothing: not farm.json, not the key, not the running farm.
        state = (data_dir / "farm.json").read_text()
        again = subprocess.run(
            [sys.executable, "-m", "app.cli", "up", "--no-flower"],
            env={**env, "MODELFARM_API_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1, again.stdout + again.stderr
        said = " ".join((again.stdout + again.stderr).split())
        assert "already running" in said and api in said and f"PID {proc.proc.pid}" in said
        assert (data_dir / "farm.json").read_text() == state
        assert not (data_dir / "logs" / "api.log").read_text().count("Address already in use")
        assert httpx.get(f"{api}/readyz", timeout=10).status_code == 200
        assert proc.proc.poll() is None
    finally:
        proc.stop()
    assert proc.proc.returncode == 0, proc.output()[-3000:]


def test_the_default_key_is_kept_across_starts(services: dict[str, str]) -> None:
    """`up` mints the `default` tenant's key once; a later start shows the same one, and a
    key that no longer works (revoked) is replaced rather than shown."""
    from app.local.farm import default_key
    from app.services.keys import list_keys, revoke_key
    from app.unit_of_work import session_scope

    first, minted = default_key(None)
    assert minted
    with session_scope() as session:
        count = len(list_keys(session, "default"))
    assert default_key(first) == (first, False)
    with session_scope() as session:
        assert len(list_keys(session, "default")) == count  # nothing minted
        revoke_key(session, first)
    replaced, minted = default_key(first)
    assert minted and replaced != first


def _worker_main(up: subprocess.Popen[bytes], pool: str) -> psutil.Process:
    """The `modelfarm worker --pool <pool>` process `up` started (Celery's main process)."""
    for child in psutil.Process(up.pid).children():
        cmdline = child.cmdline()
        if "worker" in cmdline and cmdline[cmdline.index("--pool") + 1] == pool:
            return child
    raise AssertionError(f"no {pool} worker under up")


def test_up_restarts_a_killed_worker_and_keeps_serving(
    tmp_path: Path, services: dict[str, str]
) -> None:
    data_dir = tmp_path / "farm"
    env = _env(
        data_dir,
        MODELFARM_DATABASE_URL=services["MODELFARM_DATABASE_URL"],
        MODELFARM_REDIS_URL=services["MODELFARM_REDIS_URL"],
        MODELFARM_API_WORKERS="1",
    )
    up = FarmProcess.start(["up", "--no-flower"], env, tmp_path / "up.log")
    try:
        # The banner comes last, once the API answers and every pool's worker beats.
        up.wait_for_log("Ctrl-C stops the farm.", timeout=240)
        output = up.output()
        banner = output[output.index("modelfarm is up") :]
        assert str(data_dir / "logs") in banner and "worker-cpu.log" in banner
        # Worker banners and warnings went to the log files, not to the terminal.
        assert "[queues]" not in output and "[tasks]" not in output
        # Its heartbeat starts on Celery's worker_ready, which may come just before the worker
        # writes its own "ready." line: give the line a moment.
        worker_log = data_dir / "logs" / "worker-cpu.log"
        deadline = time.monotonic() + 15
        while "ready." not in worker_log.read_text():
            assert time.monotonic() < deadline, worker_log.read_text()[-2000:]
            time.sleep(0.2)
        api = f"http://127.0.0.1:{env['MODELFARM_API_PORT']}"
        key = json.loads((data_dir / "farm.json").read_text())["api_key"]

        first = _worker_main(up.proc, "cpu")
        first.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "restarted" not in up.output():
            assert time.monotonic() < deadline, up.output()[-3000:]
            time.sleep(0.2)
        assert f"worker-cpu (pid {first.pid}) exited with code -9 (SIGKILL)" in up.output()
        assert "exited with code -9" in (data_dir / "logs" / "worker-cpu.log").read_text()
        second = _worker_main(up.proc, "cpu")
        assert second.pid != first.pid

        with httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            items = [{"custom_id": str(i), "input": f"after the restart {i}"} for i in range(3)]
            job = submit(client, {"model": "minilm", "input": {"items": items}, "device": "cpu"})
            done = wait_done(client, job["id"], timeout=240)
        assert done["status"] == "succeeded" and done["counts"]["succeeded"] == 3, done
        assert up.proc.poll() is None  # the farm never stopped
    finally:
        up.signal(signal.SIGINT)
        try:
            up.proc.wait(timeout=60)
        finally:
            up.stop()
    assert up.proc.returncode == 0, up.output()[-3000:]


def test_up_gives_up_on_an_api_that_cannot_start_and_stops(
    tmp_path: Path, services: dict[str, str]
) -> None:
    env = _env(
        tmp_path / "farm",
        MODELFARM_DATABASE_URL=services["MODELFARM_DATABASE_URL"],
        MODELFARM_REDIS_URL=services["MODELFARM_REDIS_URL"],
        MODELFARM_API_WORKERS="1",
        # The backoff still doubles (0.1, 0.2, 0.4, 0.8 s), only from a shorter start than 1 s.
        MODELFARM_RESTART_SECONDS="0.1",
    )
    # Something else holds the API's port: every start of the API fails within seconds. That
    # server hangs up on whoever connects, so `up`'s /readyz probe fails at once rather than
    # after its 2 s timeout (a listener that never accepts would hold each restart that long).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["MODELFARM_API_PORT"])))
        taken.listen()
        taken.settimeout(0.05)
        done = threading.Event()
        server = threading.Thread(target=_hang_up_on_everyone, args=(taken, done), daemon=True)
        server.start()
        up = FarmProcess.start(["up", "--no-flower"], env, tmp_path / "up.log")
        try:
            code = up.proc.wait(timeout=180)
            tree_left = [p for p in psutil.process_iter(["cmdline"]) if _under_farm(p, env)]
        finally:
            up.stop()
            done.set()
            server.join(timeout=10)
    output = up.output()
    assert code == 1, output[-3000:]
    assert output.count("api (pid") == 4 and "restarting in" in output
    # RESTART_SECONDS reached the supervisor, and the backoff doubled from it.
    assert [f"restarting in {d} s" in output for d in ("0.1", "0.2", "0.4", "0.8")] == [True] * 4
    assert "5 crashes in a row" in output and "stopping the farm" in output
    assert "Ctrl-C stops the farm." not in output  # never announced as up
    assert not tree_left, [p.info for p in tree_left]


def _hang_up_on_everyone(listener: socket.socket, done: threading.Event) -> None:
    while not done.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.close()


def _under_farm(proc: psutil.Process, env: dict[str, str]) -> bool:
    """A process of this test's farm still running (they all carry its DATA_DIR)."""
    try:
        return proc.environ().get("MODELFARM_DATA_DIR") == env["MODELFARM_DATA_DIR"]
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
