"""A large batch job through the farm with memory kept flat, against the naive in-process way.

    .venv/bin/python bench/memory.py [--items 1000000] [--shard-items N] [--chunk-items N]

Trains a small scikit-learn classifier (LogisticRegression, 4 numeric features, 3 classes),
dumps it with skops, and writes a JSONL input file of --items lines, streaming. Starts a
throwaway farm (bench/farm.py: API + one CPU worker), registers the model, then times upload ->
job -> output file streamed to disk, sampling every 0.5 s the RSS of the API process and of the
worker's process tree (the Celery main process and its pool children). The output is checked
by streaming it: one line per item, custom_ids in input order.

With the farm stopped, the baseline does the same predictions in this process the naive way
(read the whole file, json.loads every line, predict + predict_proba in one call, build all
output lines, write them) and reports its time and peak RSS. Its peak is sampled every 20 ms
and checked against getrusage's ru_maxrss (taken when ru_maxrss rose during the baseline).
The issue's target: worker RSS under 1.5 GB for the 1,000,000-line job.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB = 1024 * 1024
TARGET_WORKER_BYTES = 1.5 * 1024**3
N_FEATURES = 4
MODEL_NAME = "bench-memory-clf"
SAMPLE_SECONDS = 0.5


# -- inputs -----------------------------------------------------------------------------------


def train_classifier(path: Path, seed: int = 0) -> Any:
    """A 3-class LogisticRegression on synthetic numeric data, dumped with skops."""
    import skops.io
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, N_FEATURES))
    score = x @ np.array([1.5, -2.0, 0.5, 0.0]) + rng.normal(scale=0.3, size=len(x))
    y = np.array(["low", "mid", "high"])[np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))]
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    skops.io.dump(estimator, str(path))
    return estimator


def write_input(path: Path, items: int, seed: int = 1, block: int = 10_000) -> int:
    """{"custom_id": i, "input": [4 floats]} per line, written a block at a time."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for start in range(0, items, block):
            rows = rng.normal(size=(min(block, items - start), N_FEATURES)).tolist()
            f.write(
                "".join(
                    json.dumps({"custom_id": start + i, "input": row}) + "\n"
                    for i, row in enumerate(rows)
                )
            )
    return path.stat().st_size


# -- RSS sampling -----------------------------------------------------------------------------


def tree_rss(pid: int) -> tuple[int, int, int]:
    """(sum of RSS, largest single RSS, process count) over pid and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    sizes = []
    for proc in procs:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            pass  # a pool child that ended between listing and reading
    return sum(sizes), max(sizes, default=0), len(sizes)


@dataclass
class Peak:
    tree: int = 0
    largest: int = 0
    procs: int = 0

    def add(self, tree: int, largest: int, procs: int) -> None:
        self.tree = max(self.tree, tree)
        self.largest = max(self.largest, largest)
        self.procs = max(self.procs, procs)


@dataclass
class FarmSampler:
    """Samples the trees of named pids every `interval` seconds in a thread, per phase."""

    pids: dict[str, int]
    interval: float = SAMPLE_SECONDS
    phase: str = "idle"
    peaks: dict[tuple[str, str], Peak] = field(default_factory=dict)  # (name, phase)
    last: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        with self._lock:
            phase = self.phase
            for name, pid in self.pids.items():
                tree, largest, procs = tree_rss(pid)
                self.last[name] = (tree, largest, procs)
                self.peaks.setdefault((name, phase), Peak()).add(tree, largest, procs)
                self.peaks.setdefault((name, "all"), Peak()).add(tree, largest, procs)
            self.samples += 1

    def set_phase(self, phase: str) -> None:
        """A reading at the end of the phase that stops (short phases get one), then on."""
        self.sample()
        self.phase = phase

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def peak(self, name: str, phase: str = "all") -> Peak:
        return self.peaks.get((name, phase), Peak())


class SelfPeak:
    """This process's peak RSS while a block runs: sampled in a thread, and ru_maxrss."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self._stop = threading.Event()

    def __enter__(self) -> SelfPeak:
        gc.collect()
        self.start = self.peak = self.proc.memory_info().rss
        self._maxrss_before = _ru_maxrss()
        self._thread = threading.Thread(target=self._run, name="self-rss", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        maxrss = _ru_maxrss()
        if maxrss > self._maxrss_before:  # the lifetime high was set inside the block
            self.peak = max(self.peak, maxrss)


def _ru_maxrss() -> int:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024  # kilobytes on Linux


# -- the farm ---------------------------------------------------------------------------------


@dataclass
class FarmResult:
    seconds: float
    phases: dict[str, float]
    sampler: FarmSampler
    idle: dict[str, tuple[int, int, int]]
    job: dict[str, Any]


def register_model(client: Any, path: Path) -> dict[str, Any]:
    model_file = client.upload(path, purpose="model")
    response = client.http.post(
        "/v1/models", json={"name": MODEL_NAME, "framework": "sklearn", "file_id": model_file["id"]}
    )
    if response.status_code != 202:
        raise RuntimeError(f"model registration failed: {response.status_code} {response.text}")
    # A worker validates the upload; the model serves jobs once its version is ready.
    version = dict(response.json())
    deadline = time.monotonic() + 120
    while version["status"] == "validating" and time.monotonic() < deadline:
        time.sleep(0.2)
        listed = client.http.get(f"/v1/models/{MODEL_NAME}").json()["versions"]
        version = next(v for v in listed if v["id"] == version["id"])
    if version["status"] != "ready":
        raise RuntimeError(f"model validation ended {version['status']}: {version.get('error')}")
    return version


def run_farm(
    model_path: Path, input_path: Path, output_path: Path, extra_env: dict[str, str], timeout: float
) -> FarmResult:
    from bench.farm import running_farm

    with running_farm(extra_env) as farm:
        client = farm.client
        register_model(client, model_path)
        # Warm, as the baseline is: the worker has loaded this model (and skops, whose first
        # import takes seconds in a process that holds torch) before anything is timed.
        warm = client.create_job(
            {"model": MODEL_NAME, "input": {"items": [{"input": [0.0] * N_FEATURES}]}}
        )
        if client.wait(warm["id"], timeout=timeout, poll=0.5)["status"] != "succeeded":
            raise RuntimeError("the warm-up job did not succeed")
        sampler = FarmSampler({"api": farm.pid("api"), "worker": farm.pid("worker")})
        time.sleep(1)  # let the warm-up job's garbage settle before the idle reading
        sampler.sample()
        idle = dict(sampler.last)
        sampler.start()
        phases: dict[str, float] = {}
        start = time.perf_counter()
        try:
            sampler.set_phase("upload")
            file = client.upload(input_path)
            phases["upload"] = time.perf_counter() - start
            sampler.set_phase("job")
            job = client.create_job({"model": MODEL_NAME, "input": {"file_id": file["id"]}})
            job = _wait(client, job["id"], timeout, sampler, start)
            phases["job"] = time.perf_counter() - start - phases["upload"]
            if job["status"] != "succeeded":
                raise RuntimeError(f"the job ended {job['status']}: {job.get('error')}")
            sampler.set_phase("download")
            with output_path.open("wb") as out:
                for chunk in client.file_chunks(job["output_file_id"]):
                    out.write(chunk)
            elapsed = time.perf_counter() - start
            phases["download"] = elapsed - phases["upload"] - phases["job"]
        finally:
            sampler.stop()
        return FarmResult(elapsed, phases, sampler, idle, job)


def _wait(
    client: Any, job_id: str, timeout: float, sampler: FarmSampler, start: float
) -> dict[str, Any]:
    """Client.wait, with a progress line on stderr every 30 s and a clean stop on timeout."""
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 30
    while True:
        job = client.job(job_id, wait=1)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return dict(job)
        now = time.monotonic()
        if now >= next_report or now > deadline:
            next_report = now + 30
            counts = job.get("counts") or {}
            worker = sampler.peak("worker")
            print(
                f"[{time.perf_counter() - start:6.0f} s] {job['status']} "
                f"{counts.get('succeeded', 0) + counts.get('failed', 0)}/"
                f"{counts.get('total', '?')} items; worker peak so far: tree "
                f"{worker.tree / MB:.0f} MB, largest {worker.largest / MB:.0f} MB; "
                f"API peak {sampler.peak('api').tree / MB:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
        if now > deadline:
            client.http.post(f"/v1/jobs/{job_id}/cancel")
            raise TimeoutError(
                f"job {job_id} still {job['status']} after {timeout:.0f} s; "
                "cancelled (see the last progress line for what it reached)"
            )


def verify_output(
    path: Path, items: int, expected: Callable[[int, dict[str, Any]], None] | None = None
) -> int:
    """Stream the output: one line per item, custom_ids 0, 1, 2 ... in order."""
    count = 0
    with path.open("rb") as f:
        for line in f:
            row = json.loads(line)
            if row["custom_id"] != count:
                raise AssertionError(
                    f"line {count + 1}: custom_id {row['custom_id']!r}, expected {count}"
                )
            if expected is not None:
                expected(count, row)
            count += 1
    if count != items:
        raise AssertionError(f"{count} output lines for {items} items")
    return count


# -- the baseline -----------------------------------------------------------------------------


@dataclass
class BaselineResult:
    seconds: float
    start_rss: int
    peak_rss: int
    labels: list[str]
    probabilities: np.ndarray


def run_baseline(estimator: Any, input_path: Path, output_path: Path) -> BaselineResult:
    classes = [str(c) for c in estimator.classes_]
    with SelfPeak() as peak:
        start = time.perf_counter()
        text = input_path.read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        features = np.array([row["input"] for row in rows], dtype=np.float64)
        labels = estimator.predict(features).tolist()
        probabilities = estimator.predict_proba(features)
        lines = [
            json.dumps(
                {
                    "custom_id": row["custom_id"],
                    "output": {"label": label, "scores": dict(zip(classes, p, strict=True))},
                },
                separators=(",", ":"),
            )
            + "\n"
            for row, label, p in zip(rows, labels, probabilities.tolist(), strict=True)
        ]
        output_path.write_text("".join(lines))
        seconds = time.perf_counter() - start
    del text, rows, lines, features
    return BaselineResult(seconds, peak.start, peak.peak, labels, probabilities)


# -- report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument(
        "--shard-items",
        type=int,
        default=None,
        help="MODELFARM_SKLEARN_SHARD_ITEMS for the worker (default: the farm's)",
    )
    parser.add_argument(
        "--chunk-items",
        type=int,
        default=None,
        help="MODELFARM_CHUNK_ITEMS for the worker (default: the farm's)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1200,
        help="give up on (and cancel) the farm job after this many seconds",
    )
    args = parser.parse_args()
    from app.config import Settings

    defaults = Settings.model_fields
    extra_env: dict[str, str] = {}
    knobs, values = [], {}
    for flag, env, name in (
        (args.shard_items, "MODELFARM_SKLEARN_SHARD_ITEMS", "sklearn_shard_items"),
        (args.chunk_items, "MODELFARM_CHUNK_ITEMS", "chunk_items"),
    ):
        if flag is not None:
            extra_env[env] = str(flag)
            values[name] = flag
            knobs.append(f"{name}: {flag}")
        else:
            values[name] = int(os.environ.get(env, defaults[name].default))
            knobs.append(f"{name}: {values[name]} (default)")

    with tempfile.TemporaryDirectory(prefix="mf-memory-") as tmp_name:
        tmp = Path(tmp_name)
        model_path, input_path = tmp / "classifier.skops", tmp / "input.jsonl"
        estimator = train_classifier(model_path)
        input_bytes = write_input(input_path, args.items)

        farm = run_farm(model_path, input_path, tmp / "farm-output.jsonl", extra_env, args.timeout)
        verify_output(tmp / "farm-output.jsonl", args.items)
        base = run_baseline(estimator, input_path, tmp / "baseline-output.jsonl")

        # The farm's answers against the baseline's, streamed (the baseline is measured).
        worst = 0.0

        def same_as_baseline(i: int, row: dict[str, Any]) -> None:
            nonlocal worst
            if row["output"]["label"] != base.labels[i]:
                raise AssertionError(
                    f"item {i}: label {row['output']['label']!r}, baseline {base.labels[i]!r}"
                )
            scores = row["output"]["scores"]
            got = np.array([scores[str(c)] for c in estimator.classes_])
            worst = max(worst, float(np.abs(got - base.probabilities[i]).max()))

        verify_output(tmp / "farm-output.jsonl", args.items, same_as_baseline)

    items = args.items
    farm_rate, base_rate = items / farm.seconds, items / base.seconds
    api, worker = farm.sampler.peak("api"), farm.sampler.peak("worker")
    api_idle, worker_idle = farm.idle["api"], farm.idle["worker"]
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in farm.phases.items())
    by_phase = "; ".join(
        f"{phase} api {farm.sampler.peak('api', phase).tree / MB:.0f} / worker "
        f"{farm.sampler.peak('worker', phase).tree / MB:.0f}"
        for phase in ("upload", "job", "download")
    )
    print(
        f"items: {items}  cores: {os.cpu_count()}  input: {input_bytes / MB:.1f} MB  "
        f"{'  '.join(knobs)}  shards: {-(-items // values['sklearn_shard_items'])}"
    )
    print(
        f"farm (upload -> job -> output file): {farm.seconds:8.2f} s  {farm_rate:9.1f} items/s"
        f"  ({phases})"
    )
    print(
        f"farm API peak RSS: {api.tree / MB:8.1f} MB  (idle before the job "
        f"{api_idle[0] / MB:.1f} MB, {api.procs} process(es))"
    )
    print(
        f"farm worker peak RSS: tree {worker.tree / MB:8.1f} MB, largest process "
        f"{worker.largest / MB:8.1f} MB  ({worker.procs} processes; idle before the job: "
        f"tree {worker_idle[0] / MB:.1f} MB, largest {worker_idle[1] / MB:.1f} MB)"
    )
    print(
        f"farm peak RSS by phase, MB (tree sums): {by_phase}  "
        f"[{farm.sampler.samples} samples: every {SAMPLE_SECONDS} s and at each phase's end]"
    )
    print(
        f"baseline in-process (read all, json.loads, predict_proba, build lines): "
        f"{base.seconds:8.2f} s  {base_rate:9.1f} items/s"
    )
    print(
        f"baseline peak RSS: {base.peak_rss / MB:8.1f} MB  (growth "
        f"{(base.peak_rss - base.start_rss) / MB:.1f} MB over {base.start_rss / MB:.1f} MB "
        "at its start)"
    )
    worker_growth = worker.tree - worker_idle[0]
    base_growth = base.peak_rss - base.start_rss
    print(f"ratio farm / baseline throughput: {farm_rate / base_rate:.2f}")
    print(
        f"ratio worker peak RSS / baseline peak RSS: tree {worker.tree / base.peak_rss:.2f}, "
        f"largest process {worker.largest / base.peak_rss:.2f}  "
        f"(growth: worker tree +{worker_growth / MB:.1f} MB / baseline +{base_growth / MB:.1f} MB"
        f" = {worker_growth / max(base_growth, 1):.2f})"
    )
    verdict = "met" if worker.tree < TARGET_WORKER_BYTES else "NOT met"
    print(f"target worker RSS < 1.5 GB: {verdict} (tree peak {worker.tree / MB:.0f} MB)")
    print(
        f"check: {items} output lines, custom_ids in input order, labels equal to the "
        f"baseline's, max |score difference| {worst:.2e}"
    )


if __name__ == "__main__":
    main()
