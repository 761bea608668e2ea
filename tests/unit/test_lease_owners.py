"""Lease owners that name their worker: a killed pool child is told from a stopped worker."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from workers.reliability import HOST, owner_is_dead, worker_is_gone, worker_owner


def _exited() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_an_owner_names_this_process_and_its_living_worker() -> None:
    owner = worker_owner()
    assert owner.startswith(f"{HOST}:{os.getpid()}:")
    assert not owner_is_dead(owner) and not worker_is_gone(owner)


def test_a_worker_that_exited_or_restarted_under_its_pid_is_gone() -> None:
    parent = psutil.Process(os.getppid())
    child = _exited()
    living = f"{HOST}:{child}:x/{parent.pid}@{parent.create_time():.2f}"
    assert owner_is_dead(living) and not worker_is_gone(living)  # a child killed under it
    assert worker_is_gone(f"{HOST}:{child}:x/{_exited()}@1.00")  # its worker exited too
    # The same pid, another process (a restarted container's worker): started at another time.
    assert worker_is_gone(f"{HOST}:{child}:x/{parent.pid}@{parent.create_time() - 60:.2f}")


def test_owners_that_name_no_worker_or_another_host_are_never_gone() -> None:
    child = _exited()
    assert not worker_is_gone(f"{HOST}:{child}:x")  # an owner from before: as it was
    assert not worker_is_gone(f"elsewhere:{child}:x/{_exited()}@1.00")  # unknown: retried later
    assert not worker_is_gone(None)
