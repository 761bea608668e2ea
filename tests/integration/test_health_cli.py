"""`modelfarm health`, the compose health check, against the live test farm."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import FarmProcess

pytestmark = pytest.mark.integration


def _health(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "health", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_health_answers_for_the_farm_and_its_worker(
    services: dict[str, str], cpu_worker: FarmProcess
) -> None:
    assert _health(services).returncode == 0
    own = _health(services, "--worker", f"cpu@{socket.gethostname()}")
    assert own.returncode == 0, own.stderr
    absent = _health(services, "--worker", "cpu@no-such-host", "--timeout", "1")
    assert absent.returncode == 3 and "did not answer" in absent.stderr


def test_health_fails_when_the_database_does_not_answer(services: dict[str, str]) -> None:
    env = {**services, "MODELFARM_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"}
    result = _health(env)
    assert result.returncode == 3 and "database" in result.stderr
