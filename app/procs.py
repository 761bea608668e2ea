"""A small supervisor for the processes of one machine (`modelfarm up`, the GPU pool)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def modelfarm_command(*args: str) -> list[str]:
    """The CLI as a child process, with the same interpreter (and so the same venv)."""
    return [sys.executable, "-m", "app.cli", *args]


@dataclass
class Supervisor:
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
    ) -> None:
        """Start a child; its output goes to `log_file` when given, else to this process's."""
        output = None if log_file is None else log_file.open("ab")
        # Own process group: Ctrl-C reaches the supervisor, which then stops children in order.
        self.children[name] = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=None if output is None else subprocess.STDOUT,
            start_new_session=True,
        )
        if output is not None:
            output.close()  # the child holds its own copy
        log.info("started %s (pid %d)", name, self.children[name].pid)

    def wait_any(self, poll: float = 0.5) -> tuple[str, int]:
        """Block until one child exits; returns its name and exit code."""
        while True:
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None:
                    return name, code
            time.sleep(poll)

    def stop_all(self, timeout: float = 20.0) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in self.children.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def install_stop_handlers() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so Ctrl-C and `kill` take the same clean path."""

    def _raise(signum: int, _frame: object) -> None:
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
