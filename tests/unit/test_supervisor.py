"""The restart policy of `modelfarm up` (app/local/procs.py), on real short-lived processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from app.local.procs import RestartPolicy, Supervisor, describe_exit

QUICK = RestartPolicy(initial_delay=0.05, max_delay=0.2, fast_seconds=5.0, give_up_after=3)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def until(done: Callable[[], bool], supervisor: Supervisor, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        supervisor.check()
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy(initial_delay=1, max_delay=30)
    assert [policy.delay(n) for n in range(8)] == [1, 1, 2, 4, 8, 16, 30, 30]


def test_describe_exit_names_the_signal() -> None:
    assert describe_exit(3) == "code 3"
    assert describe_exit(-9) == "code -9 (SIGKILL)"


def test_fast_crashes_are_restarted_then_given_up_on(tmp_path: Path) -> None:
    supervisor = Supervisor(policy=QUICK)
    log = tmp_path / "crasher.log"
    supervisor.start("crasher", python("import sys; sys.exit(3)"), log_file=log)
    started = time.monotonic()
    assert supervisor.supervise(poll=0.02) is None  # not essential, and nothing else runs
    child = supervisor.children["crasher"]
    assert child.gave_up and child.restarts == QUICK.give_up_after - 1
    # Waited out the backoff each time: 0.05 s, then 0.05 s (first two delays).
    assert time.monotonic() - started >= 0.1
    text = log.read_text()
    assert text.count("exited with code 3") == QUICK.give_up_after
    assert text.count("restarting in") == QUICK.give_up_after - 1
    assert "3 crashes in a row" in text and "giving up on it" in text


def test_an_essential_child_given_up_on_ends_supervision(tmp_path: Path) -> None:
    supervisor = Supervisor(policy=QUICK)
    supervisor.start("steady", python("import time; time.sleep(60)"))
    supervisor.start("api", python("import sys; sys.exit(1)"), essential=True)
    try:
        assert supervisor.supervise(poll=0.02) == "api"
        assert supervisor.children["steady"].running  # kept going until told to stop
    finally:
        supervisor.stop_all(timeout=5)
    assert not supervisor.children["steady"].running


def test_a_child_that_ran_a_while_never_gives_up(tmp_path: Path) -> None:
    # Each run outlives fast_seconds: every crash starts the count again.
    policy = RestartPolicy(initial_delay=0.05, max_delay=0.2, fast_seconds=0.2, give_up_after=2)
    supervisor = Supervisor(policy=policy)
    supervisor.start("slow", python("import time, sys; time.sleep(0.3); sys.exit(4)"))
    try:
        until(lambda: supervisor.children["slow"].restarts >= 3, supervisor)
        assert not supervisor.children["slow"].gave_up
        assert supervisor.children["slow"].streak == 0
    finally:
        supervisor.stop_all(timeout=5)


def test_a_killed_child_is_restarted_and_its_group_goes_with_it(tmp_path: Path) -> None:
    # The child starts a grandchild, as a Celery worker starts its pool children.
    code = (
        "import subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(g.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "worker.log"
    supervisor = Supervisor(policy=QUICK)
    supervisor.start("worker", python(code), log_file=log)
    try:
        until(lambda: log.read_text().strip() != "", supervisor)
        grandchild = int(log.read_text().split()[0])
        first = supervisor.pid("worker")
        os.kill(first, signal.SIGKILL)
        until(lambda: supervisor.children["worker"].restarts == 1, supervisor)
        assert supervisor.pid("worker") != first and supervisor.children["worker"].running
        assert "exited with code -9 (SIGKILL)" in log.read_text()
        until(lambda: not _alive(grandchild), supervisor, timeout=5)
    finally:
        supervisor.stop_all(timeout=5)
    assert not supervisor.children["worker"].running


def test_stop_all_cancels_a_pending_restart(tmp_path: Path) -> None:
    policy = RestartPolicy(initial_delay=30, fast_seconds=5, give_up_after=5)
    supervisor = Supervisor(policy=policy)
    supervisor.start("crasher", python("import sys; sys.exit(3)"))
    until(lambda: supervisor.children["crasher"].restart_at is not None, supervisor)
    supervisor.stop_all(timeout=5)
    supervisor.check()
    assert supervisor.children["crasher"].restarts == 0
