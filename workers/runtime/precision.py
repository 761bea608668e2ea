"""Precisions a user may choose for a text encoder or classifier, and what each costs.

- `fp32`: the default, equal to in-process transformers (within 1e-4).
- `bf16`: torch with its matrix products and convolutions autocast to bfloat16 (AMX /
  AVX-512 BF16 on CPUs that have them). A CPU without them would emulate it, slower than fp32,
  so there it is recorded as not offered, without being measured (`native_bf16`).
- `int8`: ONNX Runtime's dynamic quantisation of the version's fp32 graph (weights int8,
  activations quantised per batch at run time: VNNI's integer products on this CPU).

A precision is only offered when it stays close to fp32 on a fixed probe (docs/decisions/0017:
PROBE's texts, or IMAGE_PROBE's pictures for image models, decision 0021): embeddings' mean
cosine to fp32's vectors >= MIN_COSINE, a classifier's labels equal to fp32's on >=
MIN_AGREEMENT of the probe. The worker that quantises a graph checks it the same way
before publishing it (as workers/runtime/onnx.py checks an fp32 export), and validation
records each precision's figures in the version's info.
"""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from workers.runtime.base import ModelLoadError, ModelSpec, RunOptions

PRECISIONS = ("fp32", "bf16", "int8")
#: the model kinds (workers/runtime/registry.py) that may run at another precision than fp32
KINDS = ("embedding", "text-classification")
MIN_COSINE = 0.99
MIN_AGREEMENT = 0.98
INT8_SUFFIX = "-int8"  #: the int8 graph's folder: the fp32 graph's name with this added

_WORDS = (
    "the a model farm batch job worker queue embedding vector sentence token cluster data "
    "server request result answer question river mountain city night morning coffee table "
    "quickly slowly carefully around between under over through system process memory cache "
    "great terrible happy sad price quality delivery broken excellent refund love hate"
).split()


def _probe() -> list[str]:
    rng = random.Random(17)
    lengths = [3, 5, 8, 12, 20, 40, 90] * 7 + [250]
    texts = [" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + "." for k in lengths]
    return texts + [
        "Une phrase en français, avec des accents: é, è, à, ç.",
        "数字 123 and symbols #@! mixed in one line",
        "ok",
    ]


#: 53 texts: mixed lengths (one past every model's limit), non-ASCII, very short
PROBE = _probe()

#: image models whose precision may be chosen: only bf16 besides fp32 (no ONNX graph, so no
#: int8), measured on IMAGE_PROBE. The value is the fidelity measure their outputs take.
IMAGE_TASKS = {
    "image-classification": "image-classification",
    "image-feature-extraction": "embedding",
}


def image_probe(count: int = 50) -> list[str]:
    """`count` pictures as base64 PNG, the same every time: smooth colour fields (what a camera
    gives), stripes and a checkerboard, of sizes from a thumbnail to a photo, portrait and
    landscape, so a model's processor resizes and crops each differently."""
    from PIL import Image

    rng = np.random.default_rng(21)
    pictures = []
    for i in range(count):
        width, height = (int(v) for v in rng.integers(24, 480, 2))
        if i % 5 == 3:  # stripes: edges a convolution responds to
            row = np.repeat(rng.integers(0, 256, (1, 12, 3), dtype=np.uint8), 4, axis=1)
            small = np.repeat(row, 48, axis=0)
        elif i % 5 == 4:  # a checkerboard of two colours
            a, b = rng.integers(0, 256, (2, 3), dtype=np.uint8)
            mask = (np.indices((16, 16)).sum(axis=0) % 2).astype(bool)[..., None]
            small = np.where(mask, a, b).astype(np.uint8)
        else:
            small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        resample = Image.Resampling.NEAREST if i % 5 == 4 else Image.Resampling.BILINEAR
        picture = Image.fromarray(small).resize((width, height), resample)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        pictures.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return pictures


def native_bf16(device: str) -> bool:
    """Whether `device` computes in bfloat16 itself: a CUDA GPU that supports it, or a CPU
    with AVX-512 BF16 or AMX. Elsewhere torch emulates bf16, and it runs slower than fp32
    (measured at 0.16x `encode` on an AVX2-only CPU), so it is not offered."""
    import torch

    if device.startswith("cuda"):
        return bool(
            torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        )
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own CPU probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


#: what a version records for bf16 where the machine would emulate it
NOT_NATIVE = (
    "this machine has no bf16 instructions (AVX-512 BF16 or AMX): bf16 would be emulated, "
    "slower than fp32"
)


def fidelity(kind: str, reference: list[Any], outputs: list[Any]) -> dict[str, Any]:
    """How close `outputs` are to fp32's `reference` on the same texts, and whether that is
    close enough to offer."""
    if kind == "embedding":
        a = np.asarray(reference, dtype=np.float64)
        b = np.asarray(outputs, dtype=np.float64)
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        cosines = (a * b).sum(axis=1) / norms
        mean = round(float(cosines.mean()), 6)
        return {
            "mean_cosine": mean,
            "min_cosine": round(float(cosines.min()), 6),
            "offered": mean >= MIN_COSINE,
        }
    same = [r["label"] == o["label"] for r, o in zip(reference, outputs, strict=True)]
    agreement = round(sum(same) / len(same), 6)
    return {"label_agreement": agreement, "offered": agreement >= MIN_AGREEMENT}


def outputs(runner: Any, probe: list[str] | None = None) -> list[Any]:
    """The runner's outputs on the probe (PROBE's texts unless another is given)."""
    options = RunOptions()
    items = PROBE if probe is None else probe
    return list(runner.run([runner.prepare(t, options) for t in items], options))


def int8_folder(graph_dir: str) -> Path:
    folder = Path(graph_dir)
    return folder.with_name(folder.name + INT8_SUFFIX)


def load_int8(kind: str, spec: ModelSpec, load_torch: Callable[[], Any]) -> Any:
    """The int8 runner of a version: its fp32 graph (exported first if no worker has),
    quantised and checked by the first worker that needs it, then reused. ModelLoadError when
    the graph or its quantisation was refused."""
    from workers.runtime import onnx

    if kind not in KINDS or spec.graph_dir is None or spec.device != "cpu":
        raise ModelLoadError(
            "int8 serves text encoders and classifiers on CPU workers (ONNX Runtime) only"
        )
    fp32 = onnx.load(kind, replace(spec, precision="fp32"), load_torch)
    if getattr(fp32, "backend", None) != "onnx":
        reason = getattr(fp32, "fallback_reason", None)
        raise ModelLoadError(f"int8 needs the model's ONNX graph: {reason}")
    del fp32
    fp32_folder, folder = Path(spec.graph_dir), int8_folder(spec.graph_dir)

    if (folder / "model.onnx").is_file():
        return onnx.open_runner(folder, spec.device)
    if (folder / "refused.json").is_file():
        reason = json.loads((folder / "refused.json").read_text())["reason"]
        raise ModelLoadError(f"int8 is not offered for this model: {reason}")
    reference = outputs(onnx.open_runner(fp32_folder, "cpu"))
    refusal: list[str] = []

    def write(tmp: Path) -> None:
        report = quantize(kind, fp32_folder, tmp, reference)
        if not report["fidelity"]["offered"]:
            refusal.append(f"too far from fp32 on the probe: {report['fidelity']}")
            for name in list(tmp.iterdir()):
                name.unlink()
            (tmp / "refused.json").write_text(json.dumps({"reason": refusal[0]}))

    onnx.publish(folder, write)
    if refusal:
        raise ModelLoadError(f"int8 is not offered for this model: {refusal[0]}")
    return onnx.open_runner(folder, spec.device)


def quantize(kind: str, fp32_folder: Path, tmp: Path, reference: list[Any]) -> dict[str, Any]:
    """Write the int8 graph of `fp32_folder` into `tmp` (with its tokenizer and a runner.json
    holding its fidelity to fp32 on PROBE) and return that report."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from workers.runtime import onnx

    for path in fp32_folder.iterdir():
        if path.is_file() and path.name != "model.onnx":
            shutil.copyfile(path, tmp / path.name)
    quantize_dynamic(
        str(fp32_folder / "model.onnx"),
        str(tmp / "model.onnx"),
        weight_type=QuantType.QInt8,
        # MatMuls only, weights per output channel: measured on all-MiniLM-L6-v2 (decision
        # 0017), all quantised ops per tensor kept a mean cosine of 0.96, this 0.993
        op_types_to_quantize=["MatMul"],
        per_channel=True,
    )
    report: dict[str, Any] = json.loads((tmp / "runner.json").read_text())
    report["precision"] = "int8"
    report["fidelity"] = fidelity(kind, reference, outputs(onnx.open_runner(tmp, "cpu")))
    (tmp / "runner.json").write_text(json.dumps(report, indent=2))
    return report


def bf16_fidelity(kind: str, reference: list[Any], bf16: list[Any]) -> dict[str, Any]:
    """bf16's fidelity to fp32, offered only where it is close enough and this machine's CPU
    computes in bf16 itself (native_bf16; validation runs on a CPU worker)."""
    report = fidelity(kind, reference, bf16)
    if report["offered"] and not native_bf16("cpu"):
        report["offered"] = False
        report["reason"] = NOT_NATIVE
    return report


def measure(
    kind: str,
    load_fp32: Callable[[], Any],
    load_bf16: Callable[[], Any],
    scratch: Path,
    *,
    images: bool = False,
) -> dict[str, Any]:
    """Every precision's fidelity to fp32 on the probe, as validation records it in a
    version's info: {"fp32": {...}, "bf16": {...}, "int8": {...}}, each with `offered`.
    Image models (`images`, on IMAGE_PROBE) have fp32 and bf16 only."""
    from workers.runtime import onnx

    probe = image_probe() if images else PROBE
    torch_fp32 = load_fp32()
    report: dict[str, Any] = {"fp32": {"offered": True}}
    if not images and kind not in KINDS:
        return report
    reference = outputs(torch_fp32, probe)
    if images:
        del torch_fp32  # no graph to export: the bf16 model need not sit beside it
    if native_bf16("cpu"):  # validation runs on a CPU worker
        report["bf16"] = bf16_fidelity(kind, reference, outputs(load_bf16(), probe))
    else:  # emulated, it would only be measured to be refused, slowly
        report["bf16"] = {"offered": False, "reason": NOT_NATIVE}
    if images:
        return report
    graph = scratch / "fp32"
    try:
        onnx.export(torch_fp32, kind, graph)
    except onnx.ExportRefused as exc:
        report["int8"] = {"offered": False, "reason": f"no ONNX graph: {exc}"}
        return report
    int8 = scratch / "int8"
    int8.mkdir()
    report["int8"] = quantize(kind, graph, int8, reference)["fidelity"]
    return report
