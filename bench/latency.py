"""One-item jobs on a warm farm: POST /v1/jobs, then GET with `Prefer: wait`, timed together.

    .venv/bin/python bench/latency.py [--jobs 60]

Starts a throwaway farm (see bench/farm.py), warms it with a few jobs, then times each of
`--jobs` one-item `minilm` jobs through HTTP from the POST's first byte to the answer that shows
the job `succeeded`, and prints p50, p90 and the slowest. The in-process figure beside it is
the same one item through the runner the worker uses (ONNX Runtime, model already loaded), so
the difference shows what the farm's path costs around the model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_farm(jobs: int) -> list[float]:
    from bench.farm import running_farm

    with running_farm() as farm:
        http = farm.client.http
        body = {"model": "minilm", "input": {"items": [{"custom_id": "a", "input": "hello"}]}}
        timings = []
        for i in range(jobs + 5):
            start = time.perf_counter()
            job = http.post("/v1/jobs", json=body).json()
            done = http.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=10"}).json()
            elapsed = time.perf_counter() - start
            assert done["status"] == "succeeded", done
            if i >= 5:  # the first few warm the API's and the worker's connections
                timings.append(elapsed)
        return timings


def run_in_process(jobs: int) -> list[float]:
    import tempfile
    from dataclasses import replace

    from workers.builtins import builtin_spec
    from workers.runtime import RunOptions, load_runner

    # The worker's backend on CPU: ONNX Runtime (its graph exported here, once, as a worker
    # does on first use).
    graphs = tempfile.mkdtemp(prefix="mf-latency-graph-")
    spec = replace(builtin_spec("minilm"), backend="onnx", graph_dir=f"{graphs}/minilm")
    runner = load_runner(spec)
    timings = []
    for _ in range(jobs):
        start = time.perf_counter()
        runner.run([runner.prepare("hello", RunOptions())], RunOptions())
        timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=60)
    args = parser.parse_args()
    farm = run_farm(args.jobs)
    local = run_in_process(args.jobs)
    print(f"one-item jobs: {args.jobs}")
    for name, values in (
        ("farm (POST + GET Prefer: wait)", farm),
        ("in-process run (ONNX)", local),
    ):
        print(
            f"{name:32s} p50 {1000 * statistics.median(values):7.1f} ms"
            f"   p90 {1000 * percentile(values, 0.9):7.1f} ms   max {1000 * max(values):7.1f} ms"
        )


if __name__ == "__main__":
    main()
