"""The CLI as a user runs it, against the real API and worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("cpu_worker")]


def modelfarm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_submit_wait_status_results(
    api_url: str, tenant_key: str, tmp_path: Path, services: dict[str, str]
) -> None:
    env = {**services, "MODELFARM_API_URL": api_url, "MODELFARM_API_KEY": tenant_key}
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i}", "input": f"sentence {i}"}) + "\n" for i in range(50)
        )
        + "oops\n"
    )
    submitted = modelfarm(["submit", str(source), "--model", "minilm", "--wait"], env)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded"
    assert job["counts"] == {"total": 51, "succeeded": 50, "failed": 1}
    assert "51/51" in submitted.stderr  # the progress bar reached the end

    status = modelfarm(["status", job["id"]], env)
    assert json.loads(status.stdout)["id"] == job["id"]
    assert modelfarm(["wait", job["id"]], env).returncode == 0

    out = tmp_path / "out.jsonl"
    assert modelfarm(["results", job["id"], "-o", str(out)], env).returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(50)]
    errors = modelfarm(["results", job["id"], "--errors"], env)
    assert json.loads(errors.stdout)["error"]["code"] == "invalid_json"


def test_cli_reports_api_errors(api_url: str, tmp_path: Path, services: dict[str, str]) -> None:
    env = {**services, "MODELFARM_API_URL": api_url, "MODELFARM_API_KEY": "mf_wrong"}
    result = modelfarm(["status", "job_x"], env)
    assert result.returncode == 1 and "unauthorized" in result.stderr


def test_keys_create_prints_a_working_key(api_url: str, services: dict[str, str]) -> None:
    result = modelfarm(["keys", "create", "--tenant", "cli-team"], services)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    response = httpx.get(f"{api_url}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
