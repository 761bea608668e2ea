"""Training jobs end to end: upload labelled data, train on a worker, use the new version.

The metrics the farm reports are checked against the same estimator trained here, on the same
split, and the registered version is then used by a batch inference job.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.factories import make_tiny_feature_extractor
from tests.helpers import (
    all_pages,
    assert_error,
    jsonl,
    read_lines,
    register_ready,
    run_job,
    submit,
    upload,
    wait_done,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker", "sweeper")]


def _classification_rows(n: int = 300, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    score = x @ np.array([1.5, -2.0, 0.5, 0.0]) + rng.normal(scale=0.5, size=n)
    labels = ["low" if s < -1 else "high" if s > 1 else "mid" for s in score]
    return x, labels


def _train(client: httpx.Client, rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    file = upload(client, jsonl(rows), purpose="training", name="train.jsonl")
    body = {"type": "training", "input": {"file_id": file["id"]}, **fields}
    return wait_done(client, submit(client, body)["id"], timeout=300)


def _split(labels: list[Any], fraction: float, seed: int, stratify: bool) -> tuple[list, list]:
    # The farm's split is a plain seeded train_test_split; the test makes its own the same way.
    from sklearn.model_selection import train_test_split

    index = list(range(len(labels)))
    return train_test_split(
        index, test_size=fraction, random_state=seed, stratify=labels if stratify else None
    )


def test_sklearn_classifier_metrics_match_and_the_version_serves(client: httpx.Client) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    x, labels = _classification_rows()
    rows = [{"input": list(map(float, v)), "label": y} for v, y in zip(x, labels, strict=True)]
    params = {
        "estimator": "logistic_regression",
        "hyperparameters": {"C": 0.5, "max_iter": 500},
        "validation_split": 0.25,
        "seed": 7,
    }
    job = _train(client, rows, framework="sklearn", params=params, output_model="scores")
    assert job["status"] == "succeeded", job
    assert job["result"]["model"] == "scores@1"
    assert job["usage"]["cpu_seconds"] > 0

    train, held = _split(labels, 0.25, 7, stratify=True)
    mine = LogisticRegression(C=0.5, max_iter=500, random_state=7).fit(
        x[train], [labels[i] for i in train]
    )
    predicted = mine.predict(x[held])
    truth = [labels[i] for i in held]
    metrics = job["result"]["metrics"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert metrics["validation_examples"] == len(held)

    # The new version serves a batch job at once, with the classes it learned.
    fresh, _ = _classification_rows(20, seed=1)
    served = run_job(
        client,
        "scores",
        [{"custom_id": i, "input": list(map(float, v))} for i, v in enumerate(fresh)],
    )
    assert served["status"] == "succeeded" and served["model"] == "scores@1"
    outputs = [line["output"] for line in read_lines(client, served["output_file_id"])]
    assert [o["label"] for o in outputs] == list(mine.predict(fresh))
    model = client.get("/v1/models/scores").json()
    assert model["versions"][-1]["task"] == "classification"


def test_sklearn_regressor_with_named_features(client: httpx.Client) -> None:
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_absolute_error, r2_score

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    y = x @ np.array([2.0, -1.0, 0.3]) + 4 + rng.normal(scale=0.1, size=200)
    names = ["age", "height", "weight"]
    rows = [
        {"input": dict(zip(names, map(float, v), strict=True)), "label": float(t)}
        for v, t in zip(x, y, strict=True)
    ]
    params = {"estimator": "ridge", "hyperparameters": {"alpha": 2.0}, "seed": 5}
    job = _train(client, rows, framework="sklearn", params=params, output_model="prices")
    assert job["status"] == "succeeded", job
    train, held = _split(list(y), 0.2, 5, stratify=False)
    mine = Ridge(alpha=2.0).fit(x[train], y[train])
    predicted = mine.predict(x[held])
    metrics = job["result"]["metrics"]
    assert metrics["r2"] == pytest.approx(r2_score(y[held], predicted))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y[held], predicted))
    # Trained again: the next version of the same model.
    again = _train(client, rows, framework="sklearn", params=params, output_model="prices")
    assert again["result"]["model"] == "prices@2"
    served = run_job(client, "prices@2", [{"custom_id": "a", "input": rows[0]["input"]}])
    (line,) = read_lines(client, served["output_file_id"])
    assert line["output"] == pytest.approx(float(mine.predict(x[:1])[0]), rel=1e-6)


@pytest.mark.parametrize(
    ("fields", "code", "fragment"),
    [
        ({"params": {"estimator": "os.system"}}, "invalid_params", "logistic_regression"),
        (
            {"params": {"estimator": "ridge", "hyperparameters": {"gamma": 1}}},
            "invalid_params",
            "gamma",
        ),
        (
            {"params": {"estimator": "ridge", "hyperparameters": {"alpha": "lots"}}},
            "invalid_params",
            "alpha",
        ),
        ({"params": {"estimator": "ridge", "validation_split": 0.9}}, "invalid_params", "split"),
        ({"framework": "pytorch-lightning"}, "invalid_request", "framework"),
        ({"output_model": None}, "invalid_request", "output_model"),
        ({"output_model": "minilm"}, "invalid_params", "builtin"),
        ({"framework": "transformers", "params": {"epochs": 1}}, "invalid_params", "base_model"),
    ],
)
def test_bad_training_requests_are_422(
    client: httpx.Client, fields: dict[str, Any], code: str, fragment: str
) -> None:
    file = upload(client, jsonl([{"input": [1.0], "label": 1}]), purpose="training")
    body: dict[str, Any] = {
        "type": "training",
        "framework": "sklearn",
        "input": {"file_id": file["id"]},
        "params": {"estimator": "ridge"},
        "output_model": "m",
        **fields,
    }
    error = assert_error(client.post("/v1/jobs", json=body), 422, code)
    assert fragment in error["message"]
    assert client.get("/v1/jobs").json()["data"] == []


def test_training_input_problems(client: httpx.Client) -> None:
    empty = upload(client, b"", purpose="training")
    body = {
        "type": "training",
        "framework": "sklearn",
        "input": {"file_id": empty["id"]},
        "params": {"estimator": "logistic_regression"},
        "output_model": "m",
    }
    assert_error(client.post("/v1/jobs", json=body), 422, "invalid_training_data")
    batch = upload(client, jsonl([{"input": [1.0], "label": 1}]), purpose="batch")
    body["input"] = {"file_id": batch["id"]}
    assert_error(client.post("/v1/jobs", json=body), 422)

    # Known only once a worker reads the file: the job fails and says where.
    cases = [
        ([{"input": [1.0, 2.0], "label": "a"}, {"input": [3.0, 4.0]}], "line 2"),
        ([{"input": [1.0, 2.0], "label": "a"}] * 10, "one class"),
        ([{"input": [1.0, 2.0], "label": "a"}, {"input": [1.0], "label": "b"}], "line 2"),
    ]
    for rows, fragment in cases:
        job = _train(
            client,
            rows,
            framework="sklearn",
            params={"estimator": "logistic_regression"},
            output_model="m",
        )
        assert job["status"] == "failed", job
        assert (
            job["error"]["code"] == "invalid_training_data" and fragment in job["error"]["message"]
        )
    assert_error(client.get("/v1/models/m"), 404)  # nothing was registered


def register_archive(client: httpx.Client, directory: Path, name: str, task: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(directory, arcname="model")
    file = upload(client, buffer.getvalue(), purpose="model", name="model.tar.gz")
    body = {"name": name, "framework": "transformers", "task": task, "file_id": file["id"]}
    register_ready(client, body)


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    good = ["great", "wonderful", "excellent", "lovely", "superb"]
    bad = ["awful", "terrible", "horrible", "dreadful", "poor"]
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        word = rng.choice(good if label == "positive" else bad)
        rows.append({"input": f"the film was {word} today", "label": label})
    return rows


def test_finetune_a_tiny_transformer_and_classify(client: httpx.Client, tmp_path: Path) -> None:
    register_archive(
        client, make_tiny_feature_extractor(tmp_path / "base"), "tiny-base", "feature-extraction"
    )
    params = {"base_model": "tiny-base", "epochs": 3, "learning_rate": 5e-3, "batch_size": 8}
    job = _train(
        client, sentiment_rows(80), framework="transformers", params=params, output_model="mood"
    )
    assert job["status"] == "succeeded", job
    assert job["result"]["model"] == "mood@1" and job["model"] == "tiny-base@1"
    assert (
        job["progress"]["epoch"] == 3 and job["progress"]["step"] == job["progress"]["steps_total"]
    )
    assert job["counts"]["succeeded"] == job["counts"]["total"] == job["progress"]["steps_total"]
    events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job['id']}/events")]
    assert events.count("checkpoint") == 3
    assert 0.0 <= job["result"]["metrics"]["accuracy"] <= 1.0

    served = run_job(client, "mood", [{"custom_id": 1, "input": "the film was superb today"}])
    (line,) = read_lines(client, served["output_file_id"])
    assert set(line["output"]) == {"label", "scores"}
    assert set(line["output"]["scores"]) == {"negative", "positive"}
    version = client.get("/v1/models/mood").json()["versions"][0]
    assert version["task"] == "text-classification"
    # Measured as validation measures an upload, though a trained version is never validated:
    # int8 on its ONNX graph, so a job may choose it where it is close enough.
    measured = version["info"]["precisions"]
    assert set(measured) == {"fp32", "bf16", "int8"} and measured["fp32"] == {"offered": True}
    assert 0.0 <= measured["int8"]["label_agreement"] <= 1.0
    assert measured["int8"]["offered"] == (measured["int8"]["label_agreement"] >= 0.98)
    request = {"model": "mood", "input": {"items": [{"input": "the film was superb today"}]}}
    request["params"] = {"precision": "int8"}
    if measured["int8"]["offered"]:
        at_int8 = wait_done(client, client.post("/v1/jobs", json=request).json()["id"])
        assert at_int8["status"] == "succeeded" and at_int8["params"]["precision"] == "int8"
        (answer,) = read_lines(client, at_int8["output_file_id"])
        assert set(answer["output"]["scores"]) == {"negative", "positive"}
    else:
        refused = client.post("/v1/jobs", json=request)
        assert refused.json()["error"]["code"] == "precision_not_offered", refused.text


def test_cancel_stops_a_training_run(client: httpx.Client, tmp_path: Path) -> None:
    register_archive(
        client, make_tiny_feature_extractor(tmp_path / "base"), "tiny-base", "feature-extraction"
    )
    params = {"base_model": "tiny-base", "epochs": 50, "batch_size": 2}
    file = upload(client, jsonl(sentiment_rows(400)), purpose="training")
    body = {
        "type": "training",
        "framework": "transformers",
        "input": {"file_id": file["id"]},
        "params": params,
        "output_model": "never",
    }
    job = submit(client, body)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (client.get(f"/v1/jobs/{job['id']}").json().get("progress") or {}).get("step"):
            break
        time.sleep(0.2)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    done = wait_done(client, job["id"], timeout=60)
    assert done["status"] == "cancelled", done
    assert done["progress"]["step"] < done["progress"]["steps_total"]
    assert_error(client.get("/v1/models/never"), 404)


def test_gpu_job_without_gpu_worker_says_so(client: httpx.Client) -> None:
    job = submit(client, {"model": "minilm", "input": {"items": [{"input": "x"}]}, "device": "gpu"})
    assert job["queue"] == "gpu" and "no GPU worker" in (job["notice"] or "")
    events = [e["type"] for e in all_pages(client, f"/v1/jobs/{job['id']}/events")]
    assert "waiting_for_gpu_worker" in events
    auto = submit(client, {"model": "minilm", "input": {"items": [{"input": "x"}]}})
    assert auto["queue"] == "cpu" and auto["notice"] is None
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert wait_done(client, auto["id"])["status"] == "succeeded"


SPORTS = [
    "football",
    "tennis",
    "basketball",
    "the marathon",
    "cycling",
    "swimming",
    "rugby",
    "the league final",
    "golf",
    "the relay race",
]
COOKING = [
    "the soup",
    "pasta",
    "a cake",
    "the bread",
    "curry",
    "pancakes",
    "the salad",
    "the roast chicken",
    "a pie",
    "the stew",
]
TEMPLATES = [
    "I spent the whole afternoon on {}.",
    "Everyone was talking about {} yesterday.",
    "My brother is really into {} these days.",
    "We watched a video about {} last night.",
    "There was a long article on {} in the paper.",
]


@pytest.mark.slow
def test_finetune_minilm_classifies_held_out_sentences(client: httpx.Client) -> None:
    rows = [
        {"input": template.format(thing), "label": label}
        for label, things in (("sports", SPORTS), ("cooking", COOKING))
        for thing in things
        for template in TEMPLATES
    ]
    params = {"base_model": "minilm", "epochs": 5, "learning_rate": 1e-4, "batch_size": 8}
    job = _train(client, rows, framework="transformers", params=params, output_model="topics")
    assert job["status"] == "succeeded", job
    held_out = [
        ("The striker scored twice in the second half.", "sports"),
        ("She won the match in straight sets.", "sports"),
        ("The team trained hard before the championship game.", "sports"),
        ("He ran ten kilometres before breakfast.", "sports"),
        ("The goalkeeper saved a penalty.", "sports"),
        ("Add two cups of flour and bake for forty minutes.", "cooking"),
        ("Stir the sauce until it thickens, then season with salt.", "cooking"),
        ("The recipe needs fresh basil and garlic.", "cooking"),
        ("Chop the onions and fry them in butter.", "cooking"),
        ("Let the dough rise overnight in the fridge.", "cooking"),
    ]
    served = run_job(
        client, "topics", [{"custom_id": i, "input": text} for i, (text, _) in enumerate(held_out)]
    )
    predicted = [line["output"]["label"] for line in read_lines(client, served["output_file_id"])]
    accuracy = np.mean([p == label for p, (_, label) in zip(predicted, held_out, strict=True)])
    print(
        f"minilm fine-tuned: held-out accuracy {accuracy:.2f}, metrics {job['result']['metrics']}"
    )
    assert accuracy >= 0.9, list(zip(predicted, held_out, strict=True))
