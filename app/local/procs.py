"""A small supervisor for the processes of one machine (`modelfarm up`, the GPU pool).

A child that dies is started again after a backoff that doubles with each fast crash in a
row (capped); a child that keeps dying within seconds of its start is given up on, since
restarting it again would only fill its log. Children run in process groups of their own, so
Ctrl-C reaches the supervisor alone, which then stops them in order.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def modelfarm_command(*args: str) -> list[str]:
    """The CLI as a child process, with the same interpreter (and so the same venv)."""
    return [sys.executable, "-m", "app.cli", *args]


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay: float = 1.0  # seconds before the first restart
    max_delay: float = 30.0  # the backoff never waits longer than this
    # A run shorter than this is a fast crash: the process most likely cannot start at all
    # (a bad setting, a port in use), so the next try waits twice as long.
    fast_seconds: float = 10.0
    give_up_after: int = 5  # fast crashes in a row

    def delay(self, streak: int) -> float:
        """Seconds to wait before the next start, after `streak` fast crashes in a row."""
        return min(self.max_delay, self.initial_delay * 2.0 ** max(0, streak - 1))


@dataclass
class Child:
    name: str
    argv: list[str]
    env: Mapping[str, str] | None
    log_file: Path | None
    essential: bool  # giving up on it stops the supervisor
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    streak: int = 0  # fast crashes in a row
    restarts: int = 0
    restart_at: float | None = None  # set while waiting out the backoff
    gave_up: bool = False

    @property
    def pid(self) -> int:
        """The pid of its latest start (a child is started as soon as it is added)."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    children: dict[str, Child] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        essential: bool = False,
    ) -> None:
        """Start a child; its output goes to `log_file` when given, else to this process's."""
        child = Child(name, argv, env, log_file, essential)
        self.children[name] = child
        self._spawn(child)

    def pid(self, name: str) -> int:
        return self.children[name].pid

    def _spawn(self, child: Child) -> None:
        output = None
        if child.log_file is not None:
            child.log_file.parent.mkdir(parents=True, exist_ok=True)
            output = child.log_file.open("ab")
        try:
            child.proc = subprocess.Popen(
                child.argv,
                env={**os.environ, **(child.env or {})},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=None if output is None else subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own copy
        child.started_at = time.monotonic()
        child.restart_at = None
        log.debug("started %s (pid %d)", child.name, child.proc.pid)

    def check(self) -> list[str]:
        """One pass: notice children that exited, restart those whose backoff is over.
        Returns the names given up on in this pass."""
        now = time.monotonic()
        given_up: list[str] = []
        for child in self.children.values():
            if child.gave_up:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._spawn(child)
                    log.info("%s restarted (pid %d)", child.name, child.pid)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            if self._exited(child, now):
                given_up.append(child.name)
        return given_up

    def _exited(self, child: Child, now: float) -> bool:
        """Record an exit and schedule the restart; True when this exit gives up on it."""
        assert child.proc is not None
        code = child.proc.returncode
        # What the leader left behind (a Celery worker's pool children) goes with it: an
        # orphaned pool child would keep taking tasks that nobody supervises.
        _signal_group(child.proc, signal.SIGKILL)
        ran = now - child.started_at
        child.streak = child.streak + 1 if ran < self.policy.fast_seconds else 0
        if child.streak >= self.policy.give_up_after:
            child.gave_up = True
            message = (
                f"{child.name} exited with {describe_exit(code)}: {child.streak} crashes in a row, "
                f"each within {self.policy.fast_seconds:g} s of its start; giving up on it"
                + (f" (see {child.log_file})" if child.log_file else "")
            )
            log.error(message)
            _note(child, message)
            return True
        delay = self.policy.delay(child.streak)
        child.restart_at = now + delay
        message = (
            f"{child.name} (pid {child.proc.pid}) exited with {describe_exit(code)} after "
            f"{ran:.1f} s; restarting in {delay:g} s"
        )
        log.warning(message)
        _note(child, message)
        return False

    def supervise(self, poll: float = 0.5) -> str | None:
        """Keep the children running until an essential one is given up on (its name is
        returned) or every child is (None)."""
        while True:
            for name in self.check():
                if self.children[name].essential:
                    return name
            if all(child.gave_up for child in self.children.values()):
                return None
            time.sleep(poll)

    def stop_all(self, timeout: float = 20.0) -> None:
        for child in self.children.values():
            child.restart_at = None  # a restart waiting out its backoff never happens
            if child.running:
                _signal_group(child.proc, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            proc = child.proc
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
            # Whatever is left in its group (pool children still finishing) goes too.
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def describe_exit(code: int) -> str:
    """`code 3`, or `code -9 (SIGKILL)` for a child killed by a signal."""
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"code {code}"


def _note(child: Child, message: str) -> None:
    """The supervisor's word goes into the child's own log too, next to what it printed."""
    if child.log_file is None:
        return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with child.log_file.open("a") as f:
        f.write(f"{stamp} [supervisor] {message}\n")


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


#: Set once Ctrl-C or SIGTERM came: whatever breaks after that is the stop, not a crash.
stop_requested = threading.Event()


def install_stop_handlers() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so Ctrl-C and `kill` take the same clean path."""

    def _raise(signum: int, _frame: object) -> None:
        stop_requested.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, _raise)


def visible_gpus() -> list[str]:
    """GPU indices this host would hand to CUDA, found without starting CUDA in this process."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d.strip() for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]
