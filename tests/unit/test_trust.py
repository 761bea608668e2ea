"""The trust policy for uploaded scikit-learn models, tried with hostile files built here."""

from __future__ import annotations

import io
import json
import operator
import os
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, make_scorer
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from app.training_params import SKLEARN_ESTIMATORS, check_sklearn_params
from workers.runtime import ModelLoadError
from workers.runtime.sklearn import load_skops
from workers.runtime.training import Examples, train_sklearn

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 4))
Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)


def _dump(tmp_path: Path, obj: Any, name: str = "m.skops") -> Path:
    path = tmp_path / name
    skops.io.dump(obj, str(path))
    return path


def _refused(path: Path, *words: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_skops(str(path))
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert str(path.parent) not in message and "/tmp" not in message  # no server paths
    return message


def _rewrite_schema(path: Path, change: Any) -> None:
    """Edit a skops file's schema.json the way an attacker would, keeping its arrays."""
    with zipfile.ZipFile(path) as old:
        members = {name: old.read(name) for name in old.namelist()}
    schema = json.loads(members["schema.json"])
    change(schema)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w") as new:
        for name, data in members.items():
            new.writestr(name, data)


def _rewrite_array(path: Path, pick: Any, change: Any) -> None:
    """Change the first .npy array for which pick(array) is true."""
    with zipfile.ZipFile(path) as old:
        members = {name: old.read(name) for name in old.namelist()}
    for name, data in members.items():
        if name.endswith(".npy"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
            if pick(array):
                change(array)
                out = io.BytesIO()
                np.save(out, array, allow_pickle=False)
                members[name] = out.getvalue()
                break
    else:
        raise AssertionError("no array matched")
    with zipfile.ZipFile(path, "w") as new:
        for name, data in members.items():
            new.writestr(name, data)


# -- what the farm itself trains must load --------------------------------------------------


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
@pytest.mark.parametrize("name", sorted(SKLEARN_ESTIMATORS))
def test_every_estimator_the_farm_trains_loads(tmp_path: Path, name: str) -> None:
    _, task = SKLEARN_ESTIMATORS[name]
    labels = [int(v) for v in Y] if task == "classification" else [float(v) for v in X[:, 0]]
    params = check_sklearn_params({"estimator": name, "hyperparameters": {}})
    result = _train(Examples(inputs=X.tolist(), labels=labels), params)
    path = _dump(tmp_path, result.estimator)
    loaded = load_skops(str(path))
    assert np.array_equal(loaded.predict(X), result.estimator.predict(X))


def test_pipelines_of_allowed_steps_load(tmp_path: Path) -> None:
    pipeline = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=3)).fit(X, Y)
    loaded = load_skops(str(_dump(tmp_path, pipeline)))
    assert np.array_equal(loaded.predict(X), pipeline.predict(X))


# -- nothing callable, anywhere ---------------------------------------------------------------


def test_function_transformer_is_refused(tmp_path: Path) -> None:
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression()).fit(abs(X), Y)
    _refused(_dump(tmp_path, model), "numpy.log1p (FunctionNode)", "FunctionTransformer")


def test_a_function_smuggled_into_a_hyperparameter_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, LogisticRegression().fit(X, Y))

    def swap(schema: dict[str, Any]) -> None:
        # What a hand-made file can say: "build builtins.exec here" (or os.system ...).
        schema["content"]["content"]["solver"] = {
            "__class__": "exec",
            "__module__": "builtins",
            "__loader__": "FunctionNode",
        }

    _rewrite_schema(path, swap)
    _refused(path, "builtins.exec (FunctionNode)")


@pytest.mark.parametrize(
    "value, words",
    [
        (make_scorer(accuracy_score), "_Scorer"),
        (partial(os.getenv, "HOME"), "PartialNode"),
        (operator.attrgetter("x"), "not allowed"),
        (np.add, "numpy.add (FunctionNode)"),
    ],
    ids=["scorer", "partial", "operator", "ufunc"],
)
def test_callables_in_fitted_state_are_refused(tmp_path: Path, value: Any, words: str) -> None:
    model = LogisticRegression().fit(X, Y)
    model.scoring_ = value  # any attribute: the walk does not care where it sits
    try:
        path = _dump(tmp_path, model)
    except Exception:  # skops cannot save it at all: nothing to load either
        pytest.skip(f"skops cannot persist {type(value).__name__}")
    _refused(path, words)


def test_a_reduce_constructor_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, LogisticRegression().fit(X, Y))

    def swap(schema: dict[str, Any]) -> None:
        schema["content"]["content"]["solver"] = {
            "__class__": "Popen",
            "__module__": "subprocess",
            "__loader__": "ReduceNode",
            "__reduce__": {"args": {"__class__": "tuple", "__module__": "builtins"}},
            "content": {},
        }

    _rewrite_schema(path, swap)
    _refused(path, "subprocess.Popen (ReduceNode)")


def test_a_class_from_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, LogisticRegression().fit(X, Y))

    def swap(schema: dict[str, Any]) -> None:
        schema["__module__"] = "sklearn.utils._testing"
        schema["__class__"] = "TempMemmap"

    _rewrite_schema(path, swap)
    _refused(path, "sklearn.utils._testing.TempMemmap")


# -- native indices ---------------------------------------------------------------------------


def _is_tree_nodes(array: np.ndarray) -> bool:
    return array.dtype.names is not None and "left_child" in array.dtype.names


def test_a_tree_with_children_out_of_range_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, DecisionTreeClassifier(max_depth=3).fit(X, Y))

    def corrupt(nodes: np.ndarray) -> None:
        nodes["left_child"][0] = 10**6  # predict() would read far past the node array

    _rewrite_array(path, _is_tree_nodes, corrupt)
    _refused(path, "child indices out of range")


def test_a_tree_that_loops_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, DecisionTreeClassifier(max_depth=3).fit(X, Y))

    def corrupt(nodes: np.ndarray) -> None:
        nodes["right_child"][1] = 0  # back to the root: predict() would never end

    _rewrite_array(path, _is_tree_nodes, corrupt)
    _refused(path, "child indices out of range")


def test_a_forest_tree_reading_features_past_the_input_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, RandomForestClassifier(n_estimators=2, max_depth=3).fit(X, Y))

    def corrupt(nodes: np.ndarray) -> None:
        nodes["feature"][0] = 40  # the forest's input has 4 columns

    _rewrite_array(path, _is_tree_nodes, corrupt)
    _refused(path, "features out of range")


def test_a_gradient_boosting_predictor_out_of_range_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, HistGradientBoostingClassifier(max_iter=3).fit(X, Y))

    def corrupt(nodes: np.ndarray) -> None:
        nodes["left"][0] = 10**6

    _rewrite_array(
        path, lambda a: a.dtype.names is not None and "is_leaf" in a.dtype.names, corrupt
    )
    _refused(path, "gradient-boosting tree has indices out of range")


def test_neighbour_search_trees_are_refused_and_brute_force_loads(tmp_path: Path) -> None:
    kd = KNeighborsClassifier(algorithm="kd_tree").fit(X, Y)
    _refused(_dump(tmp_path, kd, "kd.skops"), "KDTree")
    brute = KNeighborsClassifier(algorithm="brute").fit(X, Y)
    loaded = load_skops(str(_dump(tmp_path, brute, "brute.skops")))
    assert np.array_equal(loaded.predict(X), brute.predict(X))


def test_a_skops_file_that_unpacks_past_the_cap_is_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path, LogisticRegression().fit(X, Y))
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("padding.npy", b"\0" * (8 * 1024 * 1024))  # compresses to ~8 KB
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelLoadError, match="unpacks to"):
        load_skops(str(path), max_unpacked_bytes=1024 * 1024)


def _train(examples: Examples, params: dict[str, Any]) -> Any:
    """Fit as the worker does: the class the checked params name."""
    return train_sklearn(examples, params, *SKLEARN_ESTIMATORS[params["estimator"]])
