"""Precisions a user chooses: int8 (ONNX Runtime dynamic quantisation) and bf16 (torch
autocast), each measured against fp32 and refused below its floor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from tests.factories import make_tiny_text_classifier
from workers.builtins import builtin_spec
from workers.runtime import ModelLoadError, ModelSpec, load_runner, precision
from workers.runtime.onnx import GRAPH_NAME
from workers.runtime.validation import ModelRefused, precisions


def _mean_cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


@pytest.mark.slow  # loads a real model: `make test`, not test-fast
def test_minilm_int8_is_close_to_encode_and_records_what_it_measured(tmp_path: Path) -> None:
    graph = tmp_path / "minilm-onnx" / GRAPH_NAME
    spec = replace(builtin_spec("minilm"), backend="onnx", graph_dir=str(graph), precision="int8")
    runner = load_runner(spec)
    assert runner.backend == "onnx"  # type: ignore[attr-defined]
    report = json.loads((precision.int8_folder(str(graph)) / "runner.json").read_text())
    assert report["precision"] == "int8" and report["fidelity"]["offered"] is True
    # Measured again here, against sentence-transformers rather than the farm's own fp32 graph.
    reference = SentenceTransformer(spec.path, device="cpu").encode(
        precision.PROBE, normalize_embeddings=True
    )
    again = _mean_cosine(precision.outputs(runner), reference)
    assert again >= precision.MIN_COSINE
    assert again == pytest.approx(report["fidelity"]["mean_cosine"], abs=1e-3)
    # The next load reuses the published graph rather than quantising again.
    assert load_runner(spec).session is not None  # type: ignore[attr-defined]


def test_a_quantised_graph_below_its_floor_is_refused_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_tiny_text_classifier(tmp_path / "clf", ["neg", "pos", "mid"], seed=2)
    graph = tmp_path / "clf-onnx" / GRAPH_NAME
    spec = ModelSpec(
        key="clf",
        framework="transformers",
        task="text-classification",
        path=str(model),
        backend="onnx",
        graph_dir=str(graph),
        precision="int8",
    )
    monkeypatch.setattr(precision, "MIN_AGREEMENT", 1.01)  # no graph can reach it
    with pytest.raises(ModelLoadError, match="int8 is not offered"):
        load_runner(spec)
    assert (precision.int8_folder(str(graph)) / "refused.json").is_file()
    monkeypatch.setattr(precision, "MIN_AGREEMENT", 0.0)  # the refusal stands: not redone
    with pytest.raises(ModelLoadError, match="int8 is not offered"):
        load_runner(spec)
    # fp32 on the same version is untouched by the refusal.
    assert load_runner(replace(spec, precision="fp32")).backend == "onnx"  # type: ignore[attr-defined]


@pytest.mark.slow  # loads a real model: `make test`, not test-fast
def test_validation_measures_each_precision_and_refuses_a_default_not_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = make_tiny_text_classifier(tmp_path / "clf", ["neg", "pos"], seed=1)
    spec = ModelSpec(key="v", framework="transformers", task="text-classification", path=str(model))
    (tmp_path / "a").mkdir()
    info = precisions(spec, tmp_path / "a", "fp32")
    measured = info["precisions"]
    assert set(measured) == {"fp32", "bf16", "int8"}
    names = ("bf16", "int8") if precision.native_bf16("cpu") else ("int8",)
    for name in names:
        agreement = measured[name]["label_agreement"]
        assert 0.0 <= agreement <= 1.0
        assert measured[name]["offered"] is (agreement >= precision.MIN_AGREEMENT)
    if precision.native_bf16("cpu"):
        # bf16 measured again: the same runner kinds on the same probe give the same figure.
        fp32 = precision.outputs(load_runner(spec))
        bf16 = precision.outputs(load_runner(replace(spec, precision="bf16")))
        assert precision.bf16_fidelity("text-classification", fp32, bf16) == measured["bf16"]
    else:  # emulated bf16 is not measured only to be refused
        assert measured["bf16"] == {"offered": False, "reason": precision.NOT_NATIVE}

    monkeypatch.setattr(precision, "MIN_AGREEMENT", 1.01)
    (tmp_path / "b").mkdir()
    with pytest.raises(ModelRefused, match="precision 'int8' is not offered"):
        precisions(spec, tmp_path / "b", "int8")


def test_other_tasks_and_sklearn_serve_fp32_only(tmp_path: Path) -> None:
    spec = ModelSpec(key="s", framework="sklearn", task="classification", path="unused")
    assert precisions(spec, tmp_path, "fp32")["precisions"] == {"fp32": {"offered": True}}
    with pytest.raises(ModelRefused):
        precisions(spec, tmp_path, "bf16")


def test_bf16_is_not_offered_where_the_cpu_would_emulate_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    same = [{"label": "a"}, {"label": "b"}]
    # A CPU with AVX-512 BF16 or AMX computes in bf16: close enough is offered.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert precision.bf16_fidelity("text-classification", same, same) == {
        "label_agreement": 1.0,
        "offered": True,
    }
    # An AVX2-only CPU (measured: bf16 at 0.16x encode there) gets it measured, not offered.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    report = precision.bf16_fidelity("text-classification", same, same)
    assert report["label_agreement"] == 1.0 and report["offered"] is False
    assert "no bf16 instructions" in report["reason"]
    # Too far from fp32 is refused whatever the CPU, with no word about the CPU.
    far = precision.bf16_fidelity("text-classification", same, [{"label": "a"}, {"label": "a"}])
    assert far == {"label_agreement": 0.5, "offered": False}


def test_the_image_probe_is_fixed_and_decodes() -> None:
    from workers.runtime.images import prepare_image

    probe = precision.image_probe()
    assert probe == precision.image_probe() and len(set(probe)) == len(probe) == 50
    sizes = {prepare_image(p, 10**7).image.size for p in probe[:10]}  # type: ignore[union-attr]
    assert len(sizes) == 10  # each its own size: processors resize each differently


def test_the_builtins_offer_bf16_only_on_a_cpu_that_computes_it(tmp_path: Path) -> None:
    from app.catalogue import BUILTIN_MODELS, cpu_has_bf16

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_bf16 amx_tile\n")
    arm = tmp_path / "arm"  # Arm names its extensions under Features
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    old_arm = tmp_path / "old-arm"
    old_arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n")
    assert cpu_has_bf16(str(avx2)) is False
    assert cpu_has_bf16(str(amx)) is True
    assert cpu_has_bf16(str(arm)) is True and cpu_has_bf16(str(old_arm)) is False
    assert cpu_has_bf16(str(tmp_path / "absent")) is True  # unreadable: not held against it
    here = cpu_has_bf16()
    minilm = BUILTIN_MODELS["minilm"]
    assert minilm.offered() == (("fp32", "bf16", "int8") if here else ("fp32", "int8"))
    assert minilm.precision_info()["bf16"]["offered"] is here
    assert minilm.precision_info()["int8"] == {"offered": True}
