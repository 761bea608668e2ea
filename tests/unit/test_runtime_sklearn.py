from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from tests.factories import train_sklearn_classifier, train_sklearn_regressor
from workers.runtime import (
    ItemError,
    ModelCache,
    ModelLoadError,
    ModelSpec,
    Runner,
    RunOptions,
    check_skops_file,
    load_runner,
)

NAMES = ["age", "income", "tenure", "visits"]
OPTIONS = RunOptions()


class NotAllowlisted:
    """Stands in for code an uploader ships inside a model file."""

    def __init__(self) -> None:
        self.payload = "anything"


def _spec(path: Path, task: str, key: str = "t/m@1") -> ModelSpec:
    return ModelSpec(key=key, framework="sklearn", task=task, path=str(path))


def _run(runner: Runner, items: list[Any]) -> list[Any]:
    return runner.run([runner.prepare(item, OPTIONS) for item in items], OPTIONS)


def test_classifier_matches_predict_and_predict_proba(tmp_path: Path) -> None:
    estimator, x = train_sklearn_classifier(tmp_path / "clf.skops")
    runner = load_runner(_spec(tmp_path / "clf.skops", "classification"))
    out = _run(runner, x[:25].tolist())
    labels, probabilities = estimator.predict(x[:25]), estimator.predict_proba(x[:25])
    for item, label, row in zip(out, labels, probabilities, strict=True):
        assert item["label"] == label and type(item["label"]) is str
        assert list(item["scores"]) == [str(c) for c in estimator.classes_]
        assert list(item["scores"].values()) == pytest.approx(row.tolist(), abs=1e-12)
        assert all(type(p) is float for p in item["scores"].values())
    json.dumps(out)  # plain JSON types only


def test_regressor_matches_predict(tmp_path: Path) -> None:
    estimator, x = train_sklearn_regressor(tmp_path / "reg.skops")
    runner = load_runner(_spec(tmp_path / "reg.skops", "regression"))
    out = _run(runner, x[:30].tolist())
    assert all(type(v) is float for v in out)
    assert out == pytest.approx(estimator.predict(x[:30]).tolist(), abs=1e-12)


# The estimator's own predict on an array warns about its (hand-set) feature names.
@pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning")
def test_named_features_in_any_key_order(tmp_path: Path) -> None:
    estimator, x = train_sklearn_classifier(tmp_path / "clf.skops", feature_names=NAMES)
    runner = load_runner(_spec(tmp_path / "clf.skops", "classification"))
    named = [dict(reversed(list(zip(NAMES, row, strict=True)))) for row in x[:10].tolist()]
    # Mixed list and object items in one run share the vectorised predict.
    out = _run(runner, named + x[:10].tolist())
    assert out[:10] == out[10:]
    assert [o["label"] for o in out[:10]] == estimator.predict(x[:10]).tolist()


def test_classifier_without_predict_proba_has_empty_scores(tmp_path: Path) -> None:
    _, x = train_sklearn_classifier(tmp_path / "unused.skops")
    y = np.where(x[:, 0] > 0, 1, 0)
    estimator = LinearSVC().fit(x, y)
    skops.io.dump(estimator, str(tmp_path / "svc.skops"))
    out = _run(load_runner(_spec(tmp_path / "svc.skops", "classification")), x[:5].tolist())
    assert out == [{"label": int(v), "scores": {}} for v in estimator.predict(x[:5])]
    assert all(type(o["label"]) is int for o in out)


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ([1.0, 2.0, 3.0], "invalid_features"),
        ([1.0, 2.0, 3.0, 4.0, 5.0], "invalid_features"),
        ([1.0, 2.0, "3", 4.0], "invalid_features"),
        ([1.0, True, 3.0, 4.0], "invalid_features"),
        ([1.0, None, 3.0, 4.0], "invalid_features"),
        ([1.0, float("nan"), 3.0, 4.0], "invalid_features"),
        ({"age": 1, "income": 2, "tenure": 3}, "invalid_features"),
        ({"age": 1, "income": 2, "tenure": 3, "visits": False}, "invalid_features"),
        ({"age": 1, "income": 2, "tenure": 3, "visits": 4, "extra": 5}, "invalid_features"),
        ("1,2,3,4", "invalid_input_type"),
        (4.0, "invalid_input_type"),
        (None, "invalid_input_type"),
    ],
)
def test_bad_items_are_item_errors(tmp_path: Path, item: Any, code: str) -> None:
    train_sklearn_classifier(tmp_path / "clf.skops", feature_names=NAMES)
    runner = load_runner(_spec(tmp_path / "clf.skops", "classification"))
    with pytest.raises(ItemError) as info:
        runner.prepare(item, OPTIONS)
    assert info.value.code == code


def test_named_features_need_a_model_with_names(tmp_path: Path) -> None:
    train_sklearn_regressor(tmp_path / "reg.skops")
    runner = load_runner(_spec(tmp_path / "reg.skops", "regression"))
    assert runner.prepare([1, 2, 3, 4], OPTIONS) == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ItemError, match="without feature names"):
        runner.prepare(dict(zip(NAMES, [1, 2, 3, 4], strict=True)), OPTIONS)


def test_check_skops_file_describes_the_upload(tmp_path: Path) -> None:
    train_sklearn_classifier(tmp_path / "clf.skops", feature_names=NAMES)
    train_sklearn_regressor(tmp_path / "reg.skops")
    assert check_skops_file(str(tmp_path / "clf.skops")) == {
        "task": "classification",
        "n_features": 4,
        "feature_names": NAMES,
    }
    assert check_skops_file(str(tmp_path / "reg.skops")) == {
        "task": "regression",
        "n_features": 4,
        "feature_names": None,
    }


def test_file_with_a_foreign_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.skops"
    skops.io.dump({"model": NotAllowlisted()}, str(path))
    with pytest.raises(ModelLoadError, match="NotAllowlisted"):
        check_skops_file(str(path))
    with pytest.raises(ModelLoadError, match="NotAllowlisted"):
        load_runner(_spec(path, "regression"))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"\x80\x04pickle"])
def test_unreadable_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.skops"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        check_skops_file(str(path))


def test_task_mismatch_and_non_predictors_are_refused(tmp_path: Path) -> None:
    estimator, x = train_sklearn_regressor(tmp_path / "reg.skops")
    with pytest.raises(ModelLoadError, match="registered as classification"):
        load_runner(_spec(tmp_path / "reg.skops", "classification"))
    # Not on the allowlist at all: refused before anything is built.
    skops.io.dump(KMeans(n_clusters=2, n_init=1).fit(x), str(tmp_path / "km.skops"))
    with pytest.raises(ModelLoadError, match="not allowed: sklearn.cluster._kmeans.KMeans"):
        check_skops_file(str(tmp_path / "km.skops"))
    # Allowed (as a pipeline step), but on its own it predicts nothing.
    skops.io.dump(StandardScaler().fit(x), str(tmp_path / "scaler.skops"))
    with pytest.raises(ModelLoadError, match="cannot predict"):
        check_skops_file(str(tmp_path / "scaler.skops"))


def test_model_cache_returns_the_same_runner_and_evicts_least_recently_used(
    tmp_path: Path,
) -> None:
    specs = []
    for name in ("a", "b", "c"):
        train_sklearn_regressor(tmp_path / f"{name}.skops", seed=ord(name))
        specs.append(_spec(tmp_path / f"{name}.skops", "regression", key=f"t/{name}@1"))
    a, b, c = specs
    cache = ModelCache(max_models=2)
    first_a = cache.get(a)
    assert cache.get(a) is first_a
    cache.get(b)
    assert cache.get(a) is first_a  # a is now the most recently used
    cache.get(c)  # so b is evicted, not a
    assert a in cache and c in cache and b not in cache and len(cache) == 2
    assert cache.get(a) is first_a
    assert cache.get(b) is not None and c not in cache
