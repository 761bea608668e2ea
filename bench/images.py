"""Images through the farm, end to end, against the same classifier in-process.

    .venv/bin/python bench/images.py [--images 2000] [--runs 1] [--precisions fp32,bf16]

A ResNet-50-sized classifier built from a config (random weights: speed does not need trained
ones) with ResNet's own image processor (resize to 256, centre crop 224), and pictures of mixed
sizes as JPEG files in a zip. Starts a throwaway farm (or uses MODELFARM_TEST_DATABASE_URL /
MODELFARM_TEST_REDIS_URL), registers the model, warms the worker up with a one-picture job, then
times upload of the zip -> job -> downloaded output. With the farm stopped, it times in this
process: one picture at a time (open, processor, model: what a user writes first) and batches
of 32. Prints the throughputs and the ratios (targets: >= 2x one at a time, >= 0.9x batches).
The farm's job runs at each of `--precisions` (params.precision, docs/decisions/0021); the
ratios' first lines are fp32's (outputs equal to in-process), then each other precision's,
with the share of its labels equal to fp32 in-process and the agreement validation recorded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_model(path: Path) -> None:
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig()  # the defaults are ResNet-50: bottleneck blocks [3, 4, 6, 3]
    config.id2label = {i: f"class_{i}" for i in range(10)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    ResNetForImageClassification(config).eval().save_pretrained(path)
    ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=224 / 256).save_pretrained(path)


def make_pictures(n: int, seed: int = 3) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(n):
        width, height = (int(v) for v in rng.integers(180, 420, 2))
        # Smooth colour fields (what a camera gives JPEG), not noise, which JPEG cannot shrink.
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        pictures.append(buffer.getvalue())
    return pictures


def run_farm(
    model_dir: Path, pictures: list[bytes], runs: int, precisions: list[str]
) -> dict[str, tuple[float, list[str], object]]:
    """{precision: (best seconds, labels, the fidelity validation recorded for it)}."""
    from bench.farm import running_farm

    with running_farm() as farm:
        client = farm.client
        model_tar = farm.tmp / "model.tar.gz"
        with tarfile.open(model_tar, "w:gz") as tar:
            tar.add(model_dir, arcname="model")
        client.register_model(model_tar, "resnet50", "transformers", "image-classification")
        deadline = time.monotonic() + 600
        while client.model("resnet50")["versions"][0]["status"] == "validating":
            if time.monotonic() > deadline:
                raise TimeoutError("the model is still validating")
            time.sleep(0.5)
        archive = farm.tmp / "pictures.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # JPEG: no zip gain
            for i, data in enumerate(pictures):
                zf.writestr(f"pictures/{i:05d}.jpg", data)
        warm = farm.tmp / "warm.zip"
        with zipfile.ZipFile(warm, "w") as zf:
            zf.writestr("warm.jpg", pictures[0])
        measured = client.model("resnet50")["versions"][0]["info"]["precisions"]
        results: dict[str, tuple[float, list[str], object]] = {}
        for precision in precisions:
            if not measured.get(precision, {}).get("offered"):
                print(f"precision {precision}: not offered ({measured.get(precision)})")
                continue
            # The first job at a precision loads (and freezes) the model at it.
            client.wait(_job(client, warm, precision)["id"], timeout=600, poll=0.5)
            best, labels = float("inf"), []
            for _ in range(runs):
                start = time.perf_counter()
                job = client.wait(_job(client, archive, precision)["id"], timeout=7200, poll=0.5)
                body = b"".join(client.file_chunks(job["output_file_id"]))
                elapsed = time.perf_counter() - start
                assert job["status"] == "succeeded" and job["counts"]["failed"] == 0, job
                best = min(best, elapsed)
                labels = [json.loads(line)["output"]["label"] for line in body.splitlines()]
            results[precision] = (best, labels, measured[precision])
        return results


def _job(client: object, path: Path, precision: str) -> dict[str, object]:
    file = client.upload(path)  # type: ignore[attr-defined]
    body = {
        "model": "resnet50",
        "input": {"file_id": file["id"]},
        "device": "cpu",
        "params": {"precision": precision},
    }
    return client.create_job(body)  # type: ignore[attr-defined,no-any-return]


def run_in_process(model_dir: Path, pictures: list[bytes], batch: int) -> tuple[float, list[str]]:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    labels: list[str] = []
    with torch.inference_mode():
        warm = Image.open(io.BytesIO(pictures[0])).convert("RGB")
        model(**processor(images=[warm], return_tensors="pt"))
        start = time.perf_counter()
        for first in range(0, len(pictures), batch):
            images = [
                Image.open(io.BytesIO(data)).convert("RGB")
                for data in pictures[first : first + batch]
            ]
            logits = model(**processor(images=images, return_tensors="pt")).logits
            labels += [model.config.id2label[int(i)] for i in logits.argmax(-1)]
        return time.perf_counter() - start, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=1, help="best of N for the farm")
    parser.add_argument(
        "--precisions", default="fp32,bf16", help="the farm's jobs run at each (fp32 first)"
    )
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    pictures = make_pictures(args.images)
    with tempfile.TemporaryDirectory(prefix="mf-bench-images-") as tmp:
        model_dir = Path(tmp) / "resnet50"
        make_model(model_dir)
        farm = run_farm(model_dir, pictures, args.runs, precisions)
        one_s, one_labels = run_in_process(model_dir, pictures, 1)
        batch_s, batch_labels = run_in_process(model_dir, pictures, 32)
    n = len(pictures)
    one_rate, batch_rate = n / one_s, n / batch_s
    print(f"images: {n}  cores: {os.cpu_count()}  model: ResNet-50 (config), 224 x 224")
    print(f"in-process, one image at a time:         {one_s:8.2f} s  {one_rate:7.2f} images/s")
    print(f"in-process, batches of 32:               {batch_s:8.2f} s  {batch_rate:7.2f} images/s")
    for precision, (farm_s, farm_labels, recorded) in farm.items():
        farm_rate = n / farm_s
        same = sum(a == b for a, b in zip(farm_labels, one_labels, strict=True)) / n
        print(
            f"farm at {precision} (upload zip -> job -> output file): {farm_s:8.2f} s  "
            f"{farm_rate:7.2f} images/s"
        )
        if precision == "fp32":
            agree = sum(
                a == b == c for a, b, c in zip(farm_labels, batch_labels, one_labels, strict=True)
            )
            print(f"ratio farm / one at a time: {farm_rate / one_rate:.2f}")
            print(
                f"ratio farm / batches of 32: {farm_rate / batch_rate:.2f}  "
                f"(labels agree: {agree / n:.3f})"
            )
        else:
            print(
                f"ratio farm at {precision} / one at a time: {farm_rate / one_rate:.2f}  "
                f"/ batches of 32: {farm_rate / batch_rate:.2f}  (labels equal to fp32 "
                f"in-process: {same:.3f}; validation recorded {recorded})"
            )


if __name__ == "__main__":
    main()
