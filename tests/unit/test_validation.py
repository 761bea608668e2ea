"""What a worker checks of an upload before its version is ready, as plain function calls."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from tests.factories import make_tiny_text_classifier, train_sklearn_classifier
from workers.runtime import ModelSpec
from workers.runtime.validation import ModelRefused, check_sklearn, probe, unpack_archive

CAP = 64 * 1024 * 1024


def test_a_trusted_skops_file_passes_and_probes(tmp_path: Path) -> None:
    path = tmp_path / "clf.skops"
    train_sklearn_classifier(path)
    task, info = check_sklearn(path, None, CAP)
    assert task == "classification" and info["n_features"] == 4
    probe(ModelSpec(key="k", framework="sklearn", task=task, path=str(path)), info)


def test_a_skops_file_that_would_run_code_is_untrusted(tmp_path: Path) -> None:
    x = np.abs(np.random.default_rng(0).normal(size=(40, 3)))
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression())
    path = tmp_path / "evil.skops"
    skops.io.dump(model.fit(x, (x[:, 0] > 0.8).astype(int)), str(path))
    with pytest.raises(ModelRefused) as info:
        check_sklearn(path, None, CAP)
    assert info.value.code == "untrusted_model" and "FunctionTransformer" in info.value.message


def test_a_task_the_estimator_does_not_do_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clf.skops"
    train_sklearn_classifier(path)
    with pytest.raises(ModelRefused) as info:
        check_sklearn(path, "regression", CAP)
    assert info.value.code == "invalid_model" and "classification" in info.value.message


def _tar_gz(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        tf.add(folder, arcname="model")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(f"model/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_an_archive_unpacks_checks_and_probes(tmp_path: Path) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(_tar_gz(make_tiny_text_classifier(tmp_path / "tiny", ["neg", "pos"])))
    dest = tmp_path / "out"
    dest.mkdir()
    root, info = unpack_archive(archive, dest, CAP, 100)
    assert root == dest / "model" and "config.json" in info["files"]
    spec = ModelSpec(key="k", framework="transformers", task="text-classification", path=str(root))
    probe(spec, info)


@pytest.mark.parametrize(
    "extra, words",
    [({"model.bin": b"\x80\x04"}, "pickled"), ({"../x": b"{}"}, "points outside")],
    ids=["pickle", "escape"],
)
def test_a_bad_archive_is_invalid(tmp_path: Path, extra: dict[str, bytes], words: str) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(_tar_gz(make_tiny_text_classifier(tmp_path / "tiny", ["a", "b"]), extra))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ModelRefused) as info:
        unpack_archive(archive, dest, CAP, 100)
    assert info.value.code == "invalid_archive" and words in info.value.message


def test_an_archive_without_weights_is_invalid(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(_tar_gz(folder))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ModelRefused, match="no .safetensors weights"):
        unpack_archive(archive, dest, CAP, 100)


def test_a_model_that_will_not_load_fails_the_probe(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    spec = ModelSpec(
        key="k", framework="transformers", task="text-classification", path=str(folder)
    )
    with pytest.raises(ModelRefused) as info:
        probe(spec, {})
    assert info.value.code == "invalid_model"
