"""Routing by device and the GPU pool's own code path, run on the CPU by the device override."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import FarmProcess, read_lines, run_job

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def _worker_of(client: httpx.Client, job_id: str) -> dict[str, str]:
    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    return next(e["data"] for e in events if e["type"] == "running")


def test_gpu_jobs_run_on_the_gpu_pool(
    client: httpx.Client, gpu_worker: FarmProcess, cpu_worker: FarmProcess
) -> None:
    rows = [{"custom_id": i, "input": f"sentence number {i}"} for i in range(10)]
    gpu_job = run_job(client, "minilm", rows, device="gpu")
    assert gpu_job["status"] == "succeeded" and gpu_job["queue"] == "gpu", gpu_job
    ran = _worker_of(client, gpu_job["id"])
    # gpu0: the first (and here only) process of the GPU pool; its device is the override.
    assert ran["worker"].startswith("gpu0@")
    assert "pool=gpu device=cpu" in gpu_worker.output()

    cpu_job = run_job(client, "minilm", rows, device="cpu")
    assert _worker_of(client, cpu_job["id"])["worker"].startswith("cpu@")
    # The same model gives the same numbers on either pool.
    gpu_out = [r["output"] for r in read_lines(client, gpu_job["output_file_id"])]
    cpu_out = [r["output"] for r in read_lines(client, cpu_job["output_file_id"])]
    assert np.allclose(gpu_out, cpu_out, atol=1e-5)


def test_gpu_pool_refuses_to_start_without_gpus(services: dict[str, str], tmp_path: Path) -> None:
    env = {**services, "CUDA_VISIBLE_DEVICES": ""}
    proc = FarmProcess.start(["worker", "--pool", "gpu"], env, tmp_path / "gpu.log")
    assert proc.proc.wait(timeout=60) == 2
    assert "no GPU visible" in proc.output()
