"""Rerank, token classification and zero-shot as jobs on a real farm: uploaded tiny models,
native jobs, `/openai/v1/rerank` and `/v1/rerank` batch lines, equal to in-process
transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from tests.factories import make_tiny_cross_encoder, make_tiny_nli_model, make_tiny_token_classifier
from tests.helpers import (
    read_lines,
    register_model,
    run_job,
    run_openai_batch,
    tar_of,
    upload,
    wait_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

QUERY = "where do cats sleep"
DOCUMENTS = ["Cats sleep on warm windowsills.", "Stocks fell.", "A cat naps in the sun.", "Dogs"]


def _register(client: httpx.Client, directory: Path, name: str, task: str) -> dict[str, Any]:
    archive = upload(client, tar_of(directory), purpose="model", name=f"{name}.tar.gz")
    body = {"name": name, "framework": "transformers", "task": task, "file_id": archive["id"]}
    return register_model(client, body)


def test_rerank_ner_and_zero_shot_jobs_equal_transformers(
    client: httpx.Client, api_url: str, tmp_path: Path
) -> None:
    from transformers import pipeline

    paths = {
        "ce": make_tiny_cross_encoder(tmp_path / "ce", seed=3),
        "ner": make_tiny_token_classifier(tmp_path / "ner", seed=4),
        "nli": make_tiny_nli_model(tmp_path / "nli", seed=5),
    }
    tasks = {"ce": "text-ranking", "ner": "token-classification", "nli": "zero-shot-classification"}
    # Validation runs on the worker while the references are computed here.
    versions = [_register(client, paths[n], n, tasks[n]) for n in paths]
    expected = CrossEncoder(str(paths["ce"]), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    order = [int(i) for i in np.argsort(-expected, kind="stable")]
    ner = pipeline("token-classification", model=str(paths["ner"]), aggregation_strategy="simple")
    zero_shot = pipeline("zero-shot-classification", model=str(paths["nli"]))
    for version in versions:
        assert wait_model(client, version)["status"] == "ready", version

    # Native rerank job: one good line, one with a document that is not a string.
    rows = [
        {"custom_id": "r1", "input": {"query": QUERY, "documents": DOCUMENTS, "top_n": 3}},
        {"custom_id": "r2", "input": {"query": QUERY, "documents": ["fine", 7]}},
    ]
    job = run_job(client, "ce", rows)
    assert job["status"] == "succeeded" and job["counts"]["failed"] == 1, job
    (line,) = read_lines(client, job["output_file_id"])
    results = line["output"]["results"]
    assert [r["index"] for r in results] == order[:3]
    for r in results:
        assert r["relevance_score"] == pytest.approx(float(expected[r["index"]]), abs=1e-4)
    (error,) = read_lines(client, job["error_file_id"])
    assert error["custom_id"] == "r2" and error["error"]["code"] == "invalid_input_type"

    # Token classification and zero-shot, job-level labels and one line's own.
    text = "John Smith lives in New York and works for Acme in Paris."
    job = run_job(client, "ner", [{"custom_id": 1, "input": text}])
    (line,) = read_lines(client, job["output_file_id"])
    want = ner(text)
    assert [(e["entity"], e["start"], e["end"], e["word"]) for e in line["output"]["entities"]] == [
        (e["entity_group"], e["start"], e["end"], e["word"]) for e in want
    ]
    assert [e["score"] for e in line["output"]["entities"]] == pytest.approx(
        [float(e["score"]) for e in want], abs=1e-4
    )
    rows = [
        {"custom_id": "a", "input": text},
        {"custom_id": "b", "input": {"text": text, "labels": ["x", "y"], "multi_label": True}},
    ]
    job = run_job(client, "nli", rows, params={"labels": ["travel", "work", "food"]})
    got = {line["custom_id"]: line["output"] for line in read_lines(client, job["output_file_id"])}
    for custom_id, labels, multi in (
        ("a", ["travel", "work", "food"], False),
        ("b", ["x", "y"], True),
    ):
        want = zero_shot(text, candidate_labels=labels, multi_label=multi)
        assert got[custom_id]["labels"] == want["labels"]
        assert got[custom_id]["scores"] == pytest.approx(want["scores"], abs=1e-4)

    # The rerank surface: synchronous, then as batch lines; minilm ranks by cosine.
    oai = httpx.Client(base_url=f"{api_url}/openai/v1", headers=client.headers, timeout=60)
    answer = oai.post("/rerank", json={"model": "ce", "query": QUERY, "documents": DOCUMENTS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "ce" and [r["index"] for r in body["results"]] == order
    assert body["usage"]["total_tokens"] > 0
    cosine = oai.post(
        "/rerank", json={"model": "minilm", "query": QUERY, "documents": DOCUMENTS, "top_n": 1}
    ).json()
    assert cosine["results"][0]["index"] in (0, 2), cosine  # the cat sentences, not stocks
    refused = oai.post("/rerank", json={"model": "nli", "query": "q", "documents": ["d"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_supported"
    refused = oai.post("/rerank", json={"model": "ce", "query": "q", "documents": []})
    assert refused.status_code == 422, refused.text

    lines = [
        {"custom_id": "x", "method": "POST", "url": "/v1/rerank", "body": {"model": "ce", **b}}
        for b in ({"query": QUERY, "documents": DOCUMENTS}, {"query": "", "documents": ["d"]})
    ]
    batch = run_openai_batch(client, lines, "/v1/rerank")
    assert batch["status"] == "completed", batch
    (out,) = read_lines(client, batch["output_file_id"])
    assert [r["index"] for r in out["response"]["body"]["results"]] == order
    (err,) = read_lines(client, batch["error_file_id"])
    assert err["response"]["status_code"] == 400 and err["error"]["code"] == "empty_input"
    oai.close()


def test_precision_is_measured_at_validation_shown_and_chosen_per_job(
    client: httpx.Client, tmp_path: Path
) -> None:
    from transformers import AutoModel, AutoTokenizer

    from tests.factories import make_tiny_feature_extractor
    from workers.runtime.precision import PROBE

    path = make_tiny_feature_extractor(tmp_path / "fe", seed=6)
    archive = upload(client, tar_of(path), purpose="model", name="fe.tar.gz")
    body = {"name": "fe", "framework": "transformers", "task": "feature-extraction"}
    version = register_model(client, {**body, "file_id": archive["id"], "precision": "int8"})
    # fp32 reference in-process: the model called directly, mean-pooled and normalised.
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    import torch

    with torch.inference_mode():
        batch = tokenizer(PROBE, padding=True, truncation=True, max_length=512, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    version = wait_model(client, version)
    measured = version["info"]["precisions"]
    assert version["status"] == "ready", version  # this seed's model quantises well
    assert measured["int8"]["offered"] and measured["fp32"] == {"offered": True}
    assert version["info"]["default_precision"] == "int8"
    assert version["status"] == "ready" and version["info"]["default_precision"] == "int8"
    listed = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["fe"]["versions"][0]["info"]["precisions"] == measured

    rows = [{"custom_id": i, "input": text} for i, text in enumerate(PROBE)]
    runs = {}
    for chosen in (None, "int8", "bf16", "fp32"):
        params = {} if chosen is None else {"precision": chosen}
        if chosen is not None and not measured[chosen]["offered"]:
            refused = client.post(
                "/v1/jobs", json={"model": "fe", "input": {"items": rows[:2]}, "params": params}
            )
            assert (
                refused.status_code == 422
                and refused.json()["error"]["code"] == "precision_not_offered"
            )
            continue
        job = run_job(client, "fe", rows, params=params)
        assert job["params"]["precision"] == (chosen or "int8"), job  # the default is recorded
        lines = sorted(read_lines(client, job["output_file_id"]), key=lambda r: r["custom_id"])
        vectors = np.asarray([line["output"] for line in lines], dtype=np.float64)
        runs[chosen] = float((vectors * reference.numpy()).sum(1).mean())
    # What validation recorded is what the farm's jobs give, measured again here.
    assert runs["int8"] == pytest.approx(measured["int8"]["mean_cosine"], abs=1e-3)
    assert runs[None] == runs["int8"]
    assert runs["fp32"] == pytest.approx(1.0, abs=1e-5)
    if "bf16" in runs:
        assert runs["bf16"] == pytest.approx(measured["bf16"]["mean_cosine"], abs=1e-3)
    # int8 is ONNX Runtime on the CPU pool: asked of the GPU pool it is refused at once, and a
    # job with `device: auto` on an int8 default goes to the CPU pool whatever pools run.
    refused = client.post(
        "/v1/jobs",
        json={"model": "fe", "input": {"items": rows[:1]}, "device": "gpu"},
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "precision_not_offered"
    auto = client.post("/v1/jobs", json={"model": "fe", "input": {"items": rows[:1]}})
    assert auto.status_code in (200, 201, 202), auto.text
    assert auto.json()["queue"] == "cpu" and auto.json()["device"] == "cpu"
