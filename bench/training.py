"""scikit-learn training through the farm against the same fit in one process.

    .venv/bin/python bench/training.py [--rows 1000,50000] [--estimator random_forest]

For each size: writes a labelled JSONL file, then (farm) uploads it, submits a training job and
waits for it to succeed, timing upload -> job succeeded, and reads the job's own
started_at -> finished_at; (baseline, in this process, after the farm is stopped so the cores
are free) reads the same file with json.loads, splits it the same way and fits the same
estimator with the same hyperparameters, then scores it. Prints both times, the ratio
baseline / farm, and the fixed overhead farm - baseline in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_estimators": 100},
    "logistic_regression": {"C": 1.0, "max_iter": 1000},
    "gradient_boosting": {"n_estimators": 100},
}


def write_data(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 20))
    score = x[:, :5] @ np.array([1.0, -2.0, 0.5, 1.5, -1.0]) + rng.normal(scale=0.5, size=rows)
    labels = np.where(score < -1, "low", np.where(score > 1, "high", "mid"))
    with path.open("w") as f:
        for features, label in zip(x.tolist(), labels.tolist(), strict=True):
            f.write(json.dumps({"input": features, "label": label}) + "\n")


def run_farm(files: list[Path], estimator: str) -> list[dict[str, float]]:
    from datetime import datetime

    from bench.farm import running_farm

    params = {"estimator": estimator, "hyperparameters": HYPERPARAMETERS[estimator], "seed": 0}
    results = []
    with running_farm() as farm:
        for i, path in enumerate(files):
            start = time.perf_counter()
            file = farm.client.upload(path, purpose="training")
            job = farm.client.create_job(
                {
                    "type": "training",
                    "framework": "sklearn",
                    "input": {"file_id": file["id"]},
                    "params": params,
                    "output_model": f"bench-{i}",
                }
            )
            job = farm.client.wait(job["id"], timeout=3600, poll=0.2)
            total = time.perf_counter() - start
            assert job["status"] == "succeeded", job
            started = datetime.fromisoformat(job["started_at"])
            finished = datetime.fromisoformat(job["finished_at"])
            results.append(
                {
                    "total": total,
                    "job": (finished - started).total_seconds(),
                    "accuracy": job["result"]["metrics"]["accuracy"],
                }
            )
    return results


def run_baseline(path: Path, estimator: str) -> dict[str, float]:
    from sklearn.metrics import accuracy_score

    from app.training_params import SKLEARN_ESTIMATORS
    from workers.runtime.training import split_indices

    start = time.perf_counter()
    rows = [json.loads(line) for line in path.open()]
    x = np.array([r["input"] for r in rows], dtype=float)
    y = np.array([r["label"] for r in rows])
    train, held = split_indices(y.tolist(), 0.2, 0, stratify=True)
    model = SKLEARN_ESTIMATORS[estimator][0](**HYPERPARAMETERS[estimator], random_state=0)
    model.fit(x[train], y[train])
    accuracy = accuracy_score(y[held], model.predict(x[held]))
    return {"total": time.perf_counter() - start, "accuracy": float(accuracy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # The first job in a fresh worker also pays for importing skops (which imports torch).
    parser.add_argument("--rows", default="1000,1000,50000")
    parser.add_argument("--estimator", default="random_forest", choices=sorted(HYPERPARAMETERS))
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mf-bench-train-") as tmp:
        files = []
        for n in sizes:
            path = Path(tmp) / f"train-{n}.jsonl"
            write_data(path, n)
            files.append(path)
        farm = run_farm(files, args.estimator)
        baseline = [run_baseline(path, args.estimator) for path in files]
    print(f"\n{args.estimator}, 20 features, 3 classes, validation split 0.2 (this machine)")
    print(
        f"{'rows':>8} {'farm s':>8} {'job s':>8} {'in-proc s':>10} {'ratio':>6} {'overhead s':>11}"
    )
    for n, f, b in zip(sizes, farm, baseline, strict=True):
        assert abs(f["accuracy"] - b["accuracy"]) < 1e-9, (f, b)  # the same model, both ways
        print(
            f"{n:>8} {f['total']:>8.2f} {f['job']:>8.2f} {b['total']:>10.2f} "
            f"{b['total'] / f['total']:>6.2f} {f['total'] - b['total']:>11.2f}"
        )


if __name__ == "__main__":
    main()
