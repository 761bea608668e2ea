"""Images end to end: uploaded image models against in-process transformers, hostile pictures,
archives as input, and the seeds' example: train a digit classifier from a folder per class,
then classify held-out pictures from an archive."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from app.models import Job
from app.unit_of_work import session_scope
from tests.helpers import (
    assert_error,
    read_lines,
    register_ready,
    run_openai_batch,
    submit,
    tar_of,
    upload,
    wait_done,
)
from tests.images import (
    bad_images,
    data_url,
    digits_pngs,
    make_tiny_resnet,
    make_tiny_resnet_classifier,
    make_tiny_vit_classifier,
    noise,
    png,
    tar_of_members,
    zip_of,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

LABELS = ["cat", "dog", "fish", "bird"]


def _register(client: httpx.Client, directory: Path, name: str, task: str) -> None:
    file = upload(client, tar_of(directory), purpose="model", name=f"{name}.tar.gz")
    body = {"name": name, "framework": "transformers", "task": task, "file_id": file["id"]}
    register_ready(client, body)


def _run_file(client: httpx.Client, model: str, file_id: str) -> dict[str, Any]:
    return wait_done(client, submit(client, {"model": model, "input": {"file_id": file_id}})["id"])


def _pictures() -> list[bytes]:
    """Sizes and formats a folder of photos holds: the processor resizes each its own way."""
    return [
        png(noise(40, 30, seed=1)),
        png(noise(64, 64, seed=2), format="JPEG", quality=90),
        png(noise(17, 50, seed=3), format="WEBP", lossless=True),
        png(noise(33, 21, seed=4), format="BMP"),
    ]


def _in_process(directory: Path, auto: Any, pictures: list[bytes]) -> Any:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(directory)
    model = auto.from_pretrained(directory).eval()
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in pictures]
    with torch.no_grad():
        return model(**processor(images=images, return_tensors="pt"))


def test_uploaded_image_models_equal_in_process_transformers(
    client: httpx.Client, tmp_path: Path
) -> None:
    from transformers import AutoModel, AutoModelForImageClassification

    vit = make_tiny_vit_classifier(tmp_path / "vit", LABELS)
    resnet = make_tiny_resnet(tmp_path / "resnet")
    _register(client, vit, "tiny-vit", "image-classification")
    _register(client, resnet, "tiny-resnet", "image-feature-extraction")
    pictures = _pictures()
    hostile = bad_images()
    items = [
        {"custom_id": f"ok{i}", "input": {"image": data_url(p)}} for i, p in enumerate(pictures)
    ]
    items[1]["input"]["image"] = data_url(pictures[1]).partition(",")[2]  # plain base64
    items += [{"custom_id": k, "input": {"image": data_url(v)}} for k, v in hostile.items()]
    items.append({"custom_id": "url", "input": {"image": "https://example.com/a.png"}})

    job = submit(client, {"model": "tiny-vit", "input": {"items": items}, "params": {"top_k": 4}})
    job = wait_done(client, job["id"])
    assert job["status"] == "succeeded", job
    outputs = read_lines(client, job["output_file_id"])
    errors = {e["custom_id"]: e["error"]["code"] for e in read_lines(client, job["error_file_id"])}
    assert errors == {
        "bomb": "image_too_large",
        "huge": "image_too_large",
        "truncated": "invalid_image",
        "text": "invalid_image",
        "url": "invalid_image",
    }
    assert [o["custom_id"] for o in outputs] == [f"ok{i}" for i in range(4)]
    expected = _in_process(vit, AutoModelForImageClassification, pictures).logits.softmax(-1)
    for output, row in zip(outputs, expected.tolist(), strict=True):
        got = [output["output"]["scores"][label] for label in LABELS]
        assert np.abs(np.array(got) - np.array(row)).max() <= 1e-4
        assert output["output"]["label"] == LABELS[int(np.argmax(row))]

    rows = [{"custom_id": i, "input": {"image": data_url(p)}} for i, p in enumerate(pictures)]
    job = submit(client, {"model": "tiny-resnet", "input": {"items": rows}})
    job = wait_done(client, job["id"])
    assert job["status"] == "succeeded" and job["counts"]["failed"] == 0, job
    vectors = np.array([o["output"] for o in read_lines(client, job["output_file_id"])])
    reference = _in_process(resnet, AutoModel, pictures).pooler_output.flatten(1).numpy()
    assert vectors.shape == reference.shape and np.abs(vectors - reference).max() <= 1e-4

    # The same model through OpenAI's batch surface: /v1/predictions lines.
    line = {"method": "POST", "url": "/v1/predictions"}
    requests = [
        {
            **line,
            "custom_id": f"r{i}",
            "body": {"model": "tiny-vit", "input": {"image": url}},
        }
        for i, url in enumerate(data_url(p) for p in pictures[:2])
    ]
    batch = run_openai_batch(client, requests, "/v1/predictions")
    assert batch["status"] == "completed", batch
    answers = read_lines(client, batch["output_file_id"])
    for answer, output in zip(answers, outputs[:2], strict=True):
        assert answer["response"]["body"]["output"] == output["output"]


def test_an_image_classifier_offers_bf16_as_measured_and_a_job_chooses_it(
    client: httpx.Client, tmp_path: Path
) -> None:
    """Validation measures bf16 against fp32 on the image probe and records it; a job that
    chooses bf16 runs at it; the recorded agreement is what the runner gives again here."""
    from dataclasses import replace

    from workers.runtime import ModelSpec, load_runner, precision

    directory = make_tiny_resnet_classifier(tmp_path / "rc", LABELS)
    file = upload(client, tar_of(directory), purpose="model", name="rc.tar.gz")
    body = {"name": "tiny-rc", "framework": "transformers", "task": "image-classification"}
    version = register_ready(client, {**body, "file_id": file["id"]})
    measured = version["info"]["precisions"]
    assert set(measured) == {"fp32", "bf16"}  # no ONNX graph for images: no int8
    listed = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["tiny-rc"]["versions"][0]["info"]["precisions"] == measured
    native = precision.native_bf16("cpu")
    if native:
        # This seed's model keeps its labels at bf16 on the probe: offered, and measured again
        # here, on the frozen bf16 graph a worker runs.
        assert measured["bf16"] == {"label_agreement": 1.0, "offered": True}, measured
        spec = ModelSpec(
            key="rc", framework="transformers", task="image-classification", path=str(directory)
        )
        probe = precision.image_probe()
        fp32 = precision.outputs(load_runner(spec), probe)
        bf16_runner = load_runner(replace(spec, precision="bf16"))
        assert bf16_runner.frozen is not None  # type: ignore[attr-defined]
        bf16 = precision.outputs(bf16_runner, probe)
        assert precision.bf16_fidelity("image-classification", fp32, bf16) == measured["bf16"]
    else:
        assert measured["bf16"] == {"offered": False, "reason": precision.NOT_NATIVE}

    pictures = _pictures()
    rows = [{"custom_id": i, "input": {"image": data_url(p)}} for i, p in enumerate(pictures)]
    request = {"model": "tiny-rc", "input": {"items": rows}, "params": {"precision": "bf16"}}
    if not native:
        refused = client.post("/v1/jobs", json=request)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "precision_not_offered"
        return
    job = wait_done(client, submit(client, request)["id"])
    assert job["status"] == "succeeded" and job["params"]["precision"] == "bf16", job
    outputs = read_lines(client, job["output_file_id"])
    from transformers import AutoModelForImageClassification

    expected = _in_process(directory, AutoModelForImageClassification, pictures).logits
    got = np.array([[o["output"]["scores"][label] for label in LABELS] for o in outputs])
    difference = np.abs(got - expected.softmax(-1).numpy()).max()
    # bf16 keeps 8 bits of mantissa: close to fp32's probabilities, yet not equal to them
    # (equal would mean the job ran at fp32)
    assert 0.0 < difference <= 2e-2, difference


def test_an_archive_input_runs_one_item_per_image_in_archive_order(
    client: httpx.Client, tmp_path: Path
) -> None:
    vit = make_tiny_vit_classifier(tmp_path / "vit", LABELS)
    _register(client, vit, "tiny-vit", "image-classification")
    pictures = _pictures()
    members = [
        ("photos/z.png", pictures[0]),
        ("photos/a.jpg", pictures[1]),
        ("photos/notes.txt", b"just text"),
        ("photos/sub/b.webp", pictures[2]),
    ]
    file = upload(client, zip_of(members), name="photos.zip")
    job = wait_done(
        client, submit(client, {"model": "tiny-vit", "input": {"file_id": file["id"]}})["id"]
    )
    assert job["status"] == "succeeded" and job["counts"]["total"] == 4, job
    outputs = read_lines(client, job["output_file_id"])
    assert [o["custom_id"] for o in outputs] == [
        "photos/z.png",
        "photos/a.jpg",
        "photos/sub/b.webp",
    ]
    (error,) = read_lines(client, job["error_file_id"])
    assert error["custom_id"] == "photos/notes.txt" and error["error"]["code"] == "invalid_image"

    # A text model is not given an archive, and an archive with a link is refused whole.
    with_link = tmp_path / "link.tar"
    import tarfile

    with tarfile.open(with_link, "w") as archive:
        info = tarfile.TarInfo("photos/evil.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    file = upload(client, with_link.read_bytes(), name="link.tar")
    job = wait_done(
        client, submit(client, {"model": "tiny-vit", "input": {"file_id": file["id"]}})["id"]
    )
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_archive", job
    file = upload(client, tar_of_members(members[:1]), name="one.tgz")
    # `task` is for training jobs, and an image classifier does not fine-tune a text model.
    wrong = {"model": "tiny-vit", "task": "image-classification", "input": {"file_id": file["id"]}}
    assert_error(client.post("/v1/jobs", json=wrong), 422)
    training = upload(client, zip_of(members[:2]), purpose="training", name="t.zip")
    body = {
        "type": "training",
        "framework": "transformers",
        "task": "image-classification",
        "input": {"file_id": training["id"]},
        "params": {"base_model": "minilm"},
        "output_model": "x",
    }
    assert_error(client.post("/v1/jobs", json=body), 422, "invalid_params")
    job = wait_done(
        client, submit(client, {"model": "minilm", "input": {"file_id": file["id"]}})["id"]
    )
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input", job


def test_train_a_digit_classifier_then_classify_held_out_digits_from_an_archive(
    client: httpx.Client,
) -> None:
    """The seeds' example: a folder per class -> a training job -> a batch job over a folder."""
    pictures, labels = digits_pngs()
    held_out = set(range(0, len(pictures), 6))
    train = [i for i in range(len(pictures)) if i not in held_out][:700]
    members = [(f"digits/{labels[i]}/{i}.png", pictures[i]) for i in train]
    file = upload(client, zip_of(members), purpose="training", name="digits.zip")
    body = {
        "type": "training",
        "framework": "transformers",
        "task": "image-classification",
        "input": {"file_id": file["id"]},
        "params": {"image_size": 16, "epochs": 4, "batch_size": 32},
        "output_model": "digits",
    }
    job = wait_done(client, submit(client, body)["id"], timeout=600)
    assert job["status"] == "succeeded", job
    metrics = job["result"]["metrics"]
    assert metrics["validation_examples"] == 140 and metrics["train_examples"] == 560
    assert sorted(metrics["per_class"]) == [str(d) for d in range(10)]
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 140
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / 140)
    version = client.get("/v1/models/digits").json()["versions"][0]
    assert version["status"] == "ready" and version["task"] == "image-classification"
    # Measured as validation measures an upload, though a trained version is never validated.
    from workers.runtime import precision

    measured = version["info"]["precisions"]
    assert set(measured) == {"fp32", "bf16"} and version["info"]["default_precision"] == "fp32"
    native = precision.native_bf16("cpu")
    assert ("label_agreement" in measured["bf16"]) == native, measured

    tested = sorted(held_out)
    archive = tar_of_members([(f"test/{i:04d}.png", pictures[i]) for i in tested])
    file = upload(client, archive, name="test.tar.gz")
    job = wait_done(
        client, submit(client, {"model": "digits", "input": {"file_id": file["id"]}})["id"]
    )
    assert job["status"] == "succeeded" and job["counts"]["failed"] == 0, job
    assert len(tested) == 300
    with session_scope() as session:  # IMAGE_SHARD_ITEMS (100 here), not SHARD_ITEMS (200)
        assert session.get_one(Job, job["id"]).shards_total == 3
    outputs = read_lines(client, job["output_file_id"])  # in input order across the shards
    assert [o["custom_id"] for o in outputs] == [f"test/{i:04d}.png" for i in tested]
    right = sum(o["output"]["label"] == labels[i] for o, i in zip(outputs, tested, strict=True))
    print(f"\nheld-out digits: {right}/{len(tested)} right; validation {metrics['accuracy']:.3f}")
    assert right / len(tested) >= 0.9
    assert all(len(o["output"]["scores"]) == 5 for o in outputs)  # top_k's default
    if measured["bf16"]["offered"]:  # the same folder at bf16: the labels agree as measured
        request = {"model": "digits", "input": {"file_id": file["id"]}}
        job = wait_done(client, submit(client, {**request, "params": {"precision": "bf16"}})["id"])
        assert job["status"] == "succeeded" and job["params"]["precision"] == "bf16", job
        at_bf16 = read_lines(client, job["output_file_id"])
        pairs = zip(at_bf16, outputs, strict=True)
        same = sum(a["output"]["label"] == b["output"]["label"] for a, b in pairs)
        assert same / len(outputs) >= 0.98


def test_fine_tune_a_registered_image_model_with_a_new_head(
    client: httpx.Client, tmp_path: Path
) -> None:
    """params.base_model: a registered classifier of four labels becomes one of two, keeping
    its processor; the new version serves at once."""
    vit = make_tiny_vit_classifier(tmp_path / "vit", LABELS)
    _register(client, vit, "base-vit", "image-classification")
    members = [
        (f"shapes/{'dark' if i % 2 else 'light'}/{i}.png", png(noise(24, 24, seed=i)))
        for i in range(20)
    ]
    file = upload(client, zip_of(members), purpose="training", name="shapes.zip")
    body = {
        "type": "training",
        "framework": "transformers",
        "task": "image-classification",
        "input": {"file_id": file["id"]},
        "params": {"base_model": "base-vit", "epochs": 2, "batch_size": 8},
        "output_model": "shapes",
    }
    job = wait_done(client, submit(client, body)["id"], timeout=600)
    assert job["status"] == "succeeded", job
    metrics = job["result"]["metrics"]
    assert metrics["labels"] == ["dark", "light"] and metrics["validation_examples"] == 4
    assert np.array(metrics["confusion_matrix"]).shape == (2, 2)
    rows = [
        {"custom_id": str(i), "input": {"image": data_url(p)}}
        for i, (_, p) in enumerate(members[:3])
    ]
    job = wait_done(client, submit(client, {"model": "shapes", "input": {"items": rows}})["id"])
    assert job["status"] == "succeeded" and job["counts"]["failed"] == 0, job
    for output in read_lines(client, job["output_file_id"]):
        assert set(output["output"]["scores"]) == {"dark", "light"}
