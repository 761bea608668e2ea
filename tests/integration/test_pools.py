"""Routing by device and the GPU pool's own code path, run on the CPU by the device override."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import (
    FarmProcess,
    all_pages,
    jsonl,
    read_lines,
    run_job,
    submit,
    upload,
    wait_done,
)

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def _worker_of(client: httpx.Client, job_id: str) -> dict[str, str]:
    events = all_pages(client, f"/v1/jobs/{job_id}/events")
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
    # The same model gives the same vectors on either pool, up to precision:
    gpu_out = [r["output"] for r in read_lines(client, gpu_job["output_file_id"])]
    cpu_out = [r["output"] for r in read_lines(client, cpu_job["output_file_id"])]
    # the GPU pool computes in half precision (bf16 on this stand-in CPU), the CPU pool fp32.
    cosines = (np.asarray(gpu_out) * np.asarray(cpu_out)).sum(axis=1)
    assert cosines.min() > 0.99 and not np.allclose(gpu_out, cpu_out, atol=1e-6)


def test_gpu_pool_refuses_to_start_without_gpus(services: dict[str, str], tmp_path: Path) -> None:
    env = {**services, "CUDA_VISIBLE_DEVICES": ""}
    proc = FarmProcess.start(["worker", "--pool", "gpu"], env, tmp_path / "gpu.log")
    assert proc.proc.wait(timeout=60) == 2
    assert "no GPU visible" in proc.output()


def _wait_for_gpu_heartbeat(client: httpx.Client, timeout: float = 30) -> None:
    # `auto` follows the heartbeats in PostgreSQL; the worker beats once it is ready.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = submit(client, {"model": "minilm", "input": {"items": [{"input": "probe"}]}})
        wait_done(client, job["id"])
        if job["queue"] == "gpu":
            return
        time.sleep(0.5)
    raise AssertionError("device auto never chose the GPU pool")


def test_auto_picks_the_gpu_pool_while_a_gpu_worker_runs(
    client: httpx.Client, gpu_worker: FarmProcess, cpu_worker: FarmProcess
) -> None:
    _wait_for_gpu_heartbeat(client)
    job = run_job(client, "minilm", [{"custom_id": 1, "input": "hello"}])  # device: auto
    assert job["device"] == "auto" and job["queue"] == "gpu" and job["notice"] is None
    assert _worker_of(client, job["id"])["worker"].startswith("gpu0@")
    assert job["usage"]["cpu_seconds"] > 0
    # The override runs the GPU pool on the CPU, so no GPU time is counted.
    assert job["usage"]["gpu_seconds"] == 0


def test_training_runs_on_the_gpu_pool(
    client: httpx.Client, gpu_worker: FarmProcess, cpu_worker: FarmProcess
) -> None:
    rows = [
        {"input": [float(i), float(i % 7)], "label": "odd" if i % 2 else "even"} for i in range(60)
    ]
    file = upload(client, jsonl(rows), purpose="training")
    body = {
        "type": "training",
        "framework": "sklearn",
        "device": "gpu",
        "input": {"file_id": file["id"]},
        "params": {"estimator": "random_forest", "hyperparameters": {"n_estimators": 10}},
        "output_model": "parity",
    }
    job = wait_done(client, submit(client, body)["id"])
    assert job["status"] == "succeeded" and job["queue"] == "gpu", job
    assert _worker_of(client, job["id"])["worker"].startswith("gpu0@")
    assert job["usage"]["cpu_seconds"] > 0


def test_an_image_job_runs_in_half_precision_on_the_gpu_pool(
    client: httpx.Client, gpu_worker: FarmProcess, cpu_worker: FarmProcess, tmp_path: Path
) -> None:
    from tests.helpers import register_ready, tar_of
    from tests.images import data_url, make_tiny_vit_classifier, noise, png

    model = make_tiny_vit_classifier(tmp_path / "vit", ["a", "b", "c"])
    file = upload(client, tar_of(model), purpose="model", name="vit.tar.gz")
    body = {"name": "vit", "framework": "transformers", "task": "image-classification"}
    register_ready(client, {**body, "file_id": file["id"]})
    pictures = [data_url(png(noise(20 + i, 30, i))) for i in range(4)]
    rows = [{"custom_id": i, "input": {"image": p}} for i, p in enumerate(pictures)]
    outputs = {}
    for device in ("gpu", "cpu"):
        job = run_job(client, "vit", rows, device=device)
        assert job["status"] == "succeeded" and job["queue"] == device, job
        outputs[device] = [r["output"]["scores"] for r in read_lines(client, job["output_file_id"])]
    assert _worker_of(client, job["id"])["worker"].startswith("cpu@")
    half = np.array([[s[k] for k in "abc"] for s in outputs["gpu"]])
    full = np.array([[s[k] for k in "abc"] for s in outputs["cpu"]])
    # bf16 autocast on this stand-in CPU (fp16 on CUDA): close to fp32, and not equal to it.
    assert np.abs(half - full).max() < 0.03 and not np.allclose(half, full, atol=1e-7)


def test_a_generation_job_runs_in_half_precision_on_the_gpu_pool(
    client: httpx.Client, gpu_worker: FarmProcess, cpu_worker: FarmProcess, tmp_path: Path
) -> None:
    """Text generation on the GPU pool's own path (half precision: bf16 on this stand-in CPU,
    fp16 on CUDA) gives what the same engine gives in-process in that precision."""
    from tests.factories import make_tiny_causal_lm
    from tests.helpers import register_ready, tar_of
    from workers.runtime.base import RunOptions
    from workers.runtime.generation import load_generation_runner

    model = make_tiny_causal_lm(tmp_path / "lm", context=256)
    file = upload(client, tar_of(model), purpose="model", name="lm.tar.gz")
    body = {"name": "tiny-gen", "framework": "transformers", "task": "text-generation"}
    register_ready(client, {**body, "file_id": file["id"]})
    prompts = ["the quick brown fox", "Once upon a time", "hello world"]
    params = {"temperature": 0, "max_tokens": 8}
    rows = [{"custom_id": i, "input": p} for i, p in enumerate(prompts)]
    job = run_job(client, "tiny-gen", rows, device="gpu", params=params)
    assert job["status"] == "succeeded" and job["queue"] == "gpu", job
    assert _worker_of(client, job["id"])["worker"].startswith("gpu0@")
    half = load_generation_runner(str(model), "cpu", precision="mixed")
    options = RunOptions(params=params)
    expected = half.run([half.prepare(p, options) for p in prompts], options)
    assert [r["output"] for r in read_lines(client, job["output_file_id"])] == expected
