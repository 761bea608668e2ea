"""The ONNX Runtime backend against the torch runner it stands in for: same numbers, or torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.factories import make_tiny_feature_extractor, make_tiny_text_classifier
from workers.builtins import builtin_spec
from workers.runtime import ModelSpec, RunOptions, load_runner
from workers.runtime import onnx as onnx_backend

# Exports and runs real graphs (seconds each): in `make test`, not in `make test-fast`.
pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sat on the mat.",
    "Embeddings map text to vectors.",
    "x",
    "Ünïcödé, emoji 🙂 and numbers 42.",
    " ".join(["a sentence long enough to be truncated"] * 100),
] + [f"item number {i} of a batch that spans several micro-batches" for i in range(40)]
OPTIONS = RunOptions(batch_tokens=512, batch_size=16)


def _load(spec: ModelSpec) -> Any:
    return load_runner(spec)


def _both(spec: ModelSpec, graph_dir: Path) -> tuple[Any, Any]:
    onnx_spec = ModelSpec(**{**spec.__dict__, "backend": "onnx", "graph_dir": str(graph_dir)})
    return _load(spec), _load(onnx_spec)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_minilm_vectors_are_the_same_on_both_backends(tmp_path: Path) -> None:
    torch_runner, onnx_runner = _both(builtin_spec("minilm"), tmp_path / "graph")
    assert onnx_runner.backend == "onnx" and onnx_runner.fallback_reason is None
    expected = np.array(torch_runner.run(SENTENCES, OPTIONS))
    got = np.array(onnx_runner.run(SENTENCES, OPTIONS))
    assert got.shape == (len(SENTENCES), 384)
    assert _cosines(got, expected).min() >= 0.99999
    assert np.abs(got - expected).max() <= 1e-4
    report = json.loads((tmp_path / "graph" / "runner.json").read_text())
    assert report["exporter"] == onnx_backend.EXPORTER and report["opset"] == onnx_backend.OPSET
    assert report["max_abs_difference"] <= onnx_backend.ATOL


def test_an_uploaded_classifier_scores_the_same_on_both_backends(tmp_path: Path) -> None:
    path = make_tiny_text_classifier(tmp_path / "clf", ["neg", "neu", "pos"])
    spec = ModelSpec(
        key="t/clf@1", framework="transformers", task="text-classification", path=str(path)
    )
    torch_runner, onnx_runner = _both(spec, tmp_path / "graph")
    assert onnx_runner.backend == "onnx"
    expected = torch_runner.run(SENTENCES, OPTIONS)
    got = onnx_runner.run(SENTENCES, OPTIONS)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert list(g["scores"]) == ["neg", "neu", "pos"]
        assert max(abs(g["scores"][k] - e["scores"][k]) for k in e["scores"]) <= 1e-4


def test_a_plain_transformers_encoder_embeds_the_same(tmp_path: Path) -> None:
    path = make_tiny_feature_extractor(tmp_path / "enc")
    spec = ModelSpec(
        key="t/enc@1", framework="transformers", task="feature-extraction", path=str(path)
    )
    torch_runner, onnx_runner = _both(spec, tmp_path / "graph")
    expected = np.array(torch_runner.run(SENTENCES, OPTIONS))
    got = np.array(onnx_runner.run(SENTENCES, OPTIONS))
    assert _cosines(got, expected).min() >= 0.99999


def test_a_refused_graph_falls_back_to_torch_says_why_and_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No float graph matches torch to 0.0: a real export and a real comparison that fails.
    monkeypatch.setattr(onnx_backend, "ATOL", 0.0)
    spec = builtin_spec("minilm", backend="onnx", graph_dir=str(tmp_path / "graph"))
    runner = _load(spec)
    assert runner.backend == "torch"
    assert "differ from torch" in runner.fallback_reason
    assert not (tmp_path / "graph" / "model.onnx").exists()
    refusal = json.loads((tmp_path / "graph" / "refused.json").read_text())
    assert refusal["reason"] == runner.fallback_reason

    def no_export(*_: object) -> None:
        raise AssertionError("a refused version is not exported again")

    monkeypatch.setattr(onnx_backend, "export", no_export)
    again = _load(spec)
    assert again.backend == "torch" and again.fallback_reason == refusal["reason"]
    # Its vectors are torch's own.
    assert np.allclose(
        again.run(["hello"], OPTIONS), load_runner(builtin_spec("minilm")).run(["hello"], OPTIONS)
    )


def test_a_published_graph_is_reused_without_exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = builtin_spec("minilm", backend="onnx", graph_dir=str(tmp_path / "graph"))
    first = _load(spec)

    def no_export(*_: object) -> None:
        raise AssertionError("the graph is already there")

    monkeypatch.setattr(onnx_backend, "export", no_export)
    second = _load(spec)
    assert second.backend == "onnx"
    assert first.run(["same"], OPTIONS) == second.run(["same"], OPTIONS)


def test_two_workers_publishing_one_graph_keep_the_first(tmp_path: Path) -> None:
    folder = tmp_path / "graph"
    onnx_backend.publish(folder, lambda tmp: (tmp / "runner.json").write_text("first"))
    onnx_backend.publish(folder, lambda tmp: (tmp / "runner.json").write_text("second"))
    assert (folder / "runner.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["graph"]  # no temporary folder left


@pytest.mark.parametrize(
    "setting, device, expected",
    [("auto", "cpu", "onnx"), ("torch", "cpu", "torch"), ("onnx", "cpu", "onnx")],
)
def test_backend_choice(setting: str, device: str, expected: str) -> None:
    assert onnx_backend.resolve_backend(setting, device) == expected


def test_auto_on_cuda_uses_torch_unless_onnx_runtime_has_cuda() -> None:
    import onnxruntime

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert onnx_backend.resolve_backend("auto", "cuda") == ("onnx" if has_cuda else "torch")
    with pytest.raises(ValueError):
        onnx_backend.resolve_backend("tensorrt", "cpu")
