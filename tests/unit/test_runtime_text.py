from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

from app.catalogue import BUILTIN_MODELS
from tests.factories import make_tiny_feature_extractor, make_tiny_text_classifier
from workers.builtins import builtin_spec
from workers.runtime import (
    ItemError,
    ModelLoadError,
    ModelSpec,
    RunOptions,
    Stopped,
    builtin_path,
    configure_threads,
    load_runner,
    resolve_device,
)

MINILM = Path(builtin_path("minilm"))
LONG = " ".join(f"word{i} and another clause about item {i}," for i in range(120))
SENTENCES = [
    "The cat sat on the mat.",
    LONG,
    "Batch inference farms run models over piles of documents.",
    "Short.",
    "Quarterly revenue grew by 12 percent, driven by strong demand in the northern region "
    "while costs stayed flat and the board approved a new buyback programme.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "ok",
    "A medium sentence about embeddings and cosine similarity between vectors.",
]


@pytest.fixture(scope="module")
def minilm() -> Any:
    return load_runner(builtin_spec("minilm"))


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(MINILM), device="cpu")


def _cosines(ours: list[list[float]], theirs: np.ndarray) -> np.ndarray:
    a = np.asarray(ours)
    return (a * theirs).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(theirs, axis=1)


@pytest.mark.slow  # loads a real model: `make test`, not test-fast
def test_minilm_matches_sentence_transformers_in_input_order(minilm: Any, reference: Any) -> None:
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    assert len(tokenizer(LONG)["input_ids"]) > 256, "the long sentence must need truncation"
    expected = reference.encode(SENTENCES, normalize_embeddings=True)
    # A tiny budget forces many micro-batches, so putting results back in order is exercised.
    for options in (RunOptions(), RunOptions(batch_tokens=64, batch_size=2)):
        values = [minilm.prepare(s, options) for s in SENTENCES]
        out = minilm.run(values, options)
        assert len(out) == len(SENTENCES)
        assert all(isinstance(v, list) and isinstance(v[0], float) for v in out)
        assert np.allclose(np.linalg.norm(np.asarray(out), axis=1), 1.0, atol=1e-5)
        assert _cosines(out, expected).min() >= 0.999


def test_run_of_nothing_is_empty(minilm: Any) -> None:
    assert minilm.run([], RunOptions()) == []


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (123, "invalid_input_type"),
        (None, "invalid_input_type"),
        (True, "invalid_input_type"),
        (["a list"], "invalid_input_type"),
        ({"text": "x"}, "invalid_input_type"),
        ("", "empty_input"),
        ("   \n", "empty_input"),
        ("x" * 11, "input_too_long"),
    ],
)
def test_prepare_rejects_bad_items(minilm: Any, value: Any, code: str) -> None:
    with pytest.raises(ItemError) as info:
        minilm.prepare(value, RunOptions(max_chars=10))
    assert info.value.code == code
    assert info.value.message


def test_prepare_accepts_text_at_the_limit(minilm: Any) -> None:
    assert minilm.prepare("x" * 10, RunOptions(max_chars=10)) == "x" * 10


def _link_copy(source: Path, target: Path) -> Path:
    """A copy of a model dir whose weights are symlinks, so configs can be edited cheaply."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    for weights in source.glob("*.safetensors"):
        (target / weights.name).symlink_to(weights)
    return target


@pytest.mark.slow  # loads a real model: `make test`, not test-fast
def test_pooling_mode_from_config_is_honoured(tmp_path: Path, minilm: Any) -> None:
    model_dir = _link_copy(MINILM, tmp_path / "cls-model")
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    runner = load_runner(
        ModelSpec("cls@1", "sentence-transformers", "feature-extraction", str(model_dir))
    )
    expected = SentenceTransformer(str(model_dir), device="cpu").encode(
        SENTENCES[:4], normalize_embeddings=True
    )
    out = runner.run(SENTENCES[:4], RunOptions())
    assert _cosines(out, expected).min() >= 0.999
    mean_pooled = minilm.run(SENTENCES[:4], RunOptions())
    assert _cosines(mean_pooled, expected).min() < 0.99, "cls must differ from mean"


def test_plain_transformers_encoder_is_mean_pooled(tmp_path: Path) -> None:
    path = make_tiny_feature_extractor(tmp_path / "enc")
    runner = load_runner(ModelSpec("enc@1", "transformers", "feature-extraction", str(path)))
    texts = ["one two three", "a much longer text with quite a few more words in it", "x"]
    out = runner.run(texts, RunOptions(batch_tokens=16, batch_size=2))
    model, tokenizer = BertModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    for text, vector in zip(texts, out, strict=True):
        with torch.inference_mode():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
        assert len(vector) == 32
        assert torch.allclose(torch.tensor(vector), expected, atol=1e-5)


def test_text_classifier_matches_the_model_called_directly(tmp_path: Path) -> None:
    labels = ["negative", "neutral", "positive"]
    path = make_tiny_text_classifier(tmp_path / "clf", labels)
    runner = load_runner(ModelSpec("clf@1", "transformers", "text-classification", str(path)))
    texts = ["great stuff", "terrible, awful, no good at all " * 5, "meh"]
    out = runner.run([runner.prepare(t, RunOptions()) for t in texts], RunOptions())
    assert len(out) == 3
    for item in out:
        assert set(item) == {"label", "scores"}
        assert list(item["scores"]) == labels
        assert sum(item["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert item["label"] == max(item["scores"], key=item["scores"].get)

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    for text, item in zip(texts, out, strict=True):
        with torch.inference_mode():
            probs = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        assert item["label"] == model.config.id2label[int(probs.argmax())]
        assert [item["scores"][label] for label in labels] == pytest.approx(
            probs.tolist(), abs=1e-5
        )


def test_directory_without_safetensors_is_refused(tmp_path: Path) -> None:
    path = make_tiny_text_classifier(tmp_path / "clf", ["a", "b"])
    for weights in path.glob("*.safetensors"):
        weights.unlink()
    (path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_runner(ModelSpec("clf@1", "transformers", "text-classification", str(path)))


def test_unknown_sentence_transformers_module_is_refused(tmp_path: Path) -> None:
    model_dir = _link_copy(MINILM, tmp_path / "dense")
    modules = json.loads((model_dir / "modules.json").read_text())
    dense = "sentence_transformers.models.Dense"
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": dense})
    (model_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense"):
        load_runner(ModelSpec("d@1", "sentence-transformers", "feature-extraction", str(model_dir)))


@pytest.mark.parametrize(
    ("framework", "task", "path"),
    [
        ("onnx", "feature-extraction", str(MINILM)),
        ("transformers", "text-classification", "/nonexistent/model"),
    ],
)
def test_unloadable_specs_raise_model_load_error(framework: str, task: str, path: str) -> None:
    with pytest.raises(ModelLoadError, match="x@1"):
        load_runner(ModelSpec("x@1", framework, task, path))


def test_builtin_spec() -> None:
    spec = builtin_spec("minilm", device="cuda")
    assert (spec.key, spec.framework, spec.task, spec.device) == (
        "minilm@1",
        "sentence-transformers",
        "feature-extraction",
        "cuda",
    )
    assert (Path(spec.path) / "model.safetensors").is_file()
    with pytest.raises(KeyError):
        builtin_spec("gpt-17")
    # What app/catalogue.py offers, the runtime has weights for (and nothing else).
    for name, builtin in BUILTIN_MODELS.items():
        path = Path(builtin_path(name))
        if builtin.framework == "gguf":  # one file, converted on first use
            assert path.suffix == ".gguf" and path.is_file()
        else:
            assert (path / "config.json").is_file()
    with pytest.raises(KeyError):
        builtin_path("gpt-17")


def test_resolve_device() -> None:
    assert resolve_device("cpu", None) == "cpu"
    assert resolve_device("cuda", "cpu") == "cpu"  # the worker's override wins
    assert resolve_device("gpu", "CPU") == "cpu"
    assert resolve_device("auto", None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("tpu", None)
    if not torch.cuda.is_available():
        for requested in ("cuda", "gpu", "cuda:0"):
            with pytest.raises(ModelLoadError, match="CUDA is not available"):
                resolve_device(requested, None)
    else:
        assert resolve_device("gpu", None) == "cuda"
        with pytest.raises(ModelLoadError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}", None)


def test_configure_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        monkeypatch.setenv(name, "")  # restored after the test
    try:
        configure_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        configure_threads(before)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        configure_threads(0)


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_run_stops_between_micro_batches_when_asked(minilm: Any) -> None:
    asked = []

    def stop_on_third() -> bool:
        asked.append(1)
        return len(asked) >= 3

    texts = [f"sentence number {i} " * (1 + i % 7) for i in range(40)]
    options = RunOptions(batch_size=4, should_stop=stop_on_third)
    with pytest.raises(Stopped):
        minilm.run(texts, options)
    assert len(asked) == 3  # asked before each micro-batch, stopped at the third
    assert len(minilm.run(texts, RunOptions(batch_size=4))) == 40


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_mixed_precision_runs_half_and_stays_close(minilm: Any, reference: Any) -> None:
    """The GPU pool's torch path (fp16 autocast on CUDA; bf16 on a CPU standing in for the GPU
    through the device override): vectors in the same direction, yet not fp32's own."""
    mixed = load_runner(replace(builtin_spec("minilm"), precision="mixed"))
    options = RunOptions()
    values = [mixed.prepare(s, options) for s in SENTENCES]
    out = np.asarray(mixed.run(values, options))
    full = np.asarray(minilm.run(values, options))
    assert np.abs(out - full).max() > 1e-4  # autocast really ran in half precision
    assert (
        _cosines(out.tolist(), reference.encode(SENTENCES, normalize_embeddings=True)).min() > 0.99
    )
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)  # normalised in fp32


def test_gpu_pool_state_on_the_device_override(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The GPU pool decides as a CUDA host would: torch, mixed precision, large budgets, even
    when the override puts it on the CPU; the CPU pool keeps ONNX Runtime and fp32."""
    from app.config import get_settings
    from workers import state

    request.addfinalizer(get_settings.cache_clear)  # not to keep this test's settings
    monkeypatch.setenv("MODELFARM_DEVICE_OVERRIDE", "cpu")
    monkeypatch.setenv("MODELFARM_INFERENCE_BACKEND", "auto")
    found = {}
    for pool in ("gpu", "cpu"):
        monkeypatch.setenv("MODELFARM_WORKER_POOL", pool)
        get_settings.cache_clear()
        monkeypatch.setattr(state, "_state", None)
        current = state.current()
        spec = current.builtin("minilm")
        found[pool] = (current.device, spec.backend, spec.precision, current.batch_tokens)
    get_settings.cache_clear()
    settings = get_settings()
    assert found["gpu"] == ("cpu", "torch", "mixed", settings.gpu_batch_tokens)
    assert found["cpu"] == ("cpu", "onnx", "fp32", settings.batch_tokens)


def test_a_chunk_counts_the_tokens_the_model_read_once(minilm: Any) -> None:
    """The runner's own tokenizing is what is counted: per text as the tokenizer counts it
    (special tokens included, truncated at the model's max length), good lines only."""
    from workers.runtime.items import run_chunk

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM))
    lines = [
        (i + 1, json.dumps({"custom_id": i, "input": s}).encode()) for i, s in enumerate(SENTENCES)
    ]
    lines.append((len(lines) + 1, b'{"custom_id": "bad", "input": 7}'))
    result = run_chunk(minilm, lines, RunOptions(batch_tokens=256))
    expected = [
        len(ids) for ids in tokenizer(SENTENCES, truncation=True, max_length=256)["input_ids"]
    ]
    assert max(expected) == 256  # LONG is cut where the model cuts it
    assert len(result.outputs) == len(SENTENCES) and len(result.errors) == 1
    assert result.tokens == sum(expected)
