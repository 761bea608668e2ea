"""scikit-learn models loaded from skops files, never from pickles.

skops refuses to build any type it does not already trust unless told to. We tell it to trust
only what lives in sklearn, numpy or scipy: an uploaded file that names anything else (a class
from the uploader's own code, os, subprocess, builtins.eval ...) is refused outright.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from typing import Any

import numpy as np
import skops.io
from sklearn.base import is_classifier, is_regressor

from workers.runtime.base import ItemError, ModelLoadError, RunOptions

_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")
# No builtins are added: the harmless ones (int, dict, slice ...) are trusted by skops already,
# and the ones it leaves out (eval, exec, open, print ...) are exactly the dangerous kind.
_TRUSTED_NAMES: frozenset[str] = frozenset()


class SklearnRunner:
    """Vectorised predict over items given as feature lists or {name: number} objects."""

    def __init__(self, estimator: Any, task: str) -> None:
        self.estimator = estimator
        self.task = task
        self.n_features = int(estimator.n_features_in_)
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names: list[str] | None = None if names is None else [str(n) for n in names]
        self._has_proba = task == "classification" and hasattr(estimator, "predict_proba")
        classes = getattr(estimator, "classes_", None)
        self._classes = [] if classes is None else [_plain(c) for c in classes]

    def prepare(self, value: Any, options: RunOptions) -> list[float]:
        if isinstance(value, dict):
            return self._from_named(value)
        if isinstance(value, list):
            if len(value) != self.n_features:
                raise ItemError(
                    "invalid_features",
                    f"expected {self.n_features} features, got {len(value)}",
                )
            return [_number(v, f"feature {i}") for i, v in enumerate(value)]
        raise ItemError(
            "invalid_input_type",
            "input must be an array of numbers or an object of named features",
        )

    def _from_named(self, value: dict[str, Any]) -> list[float]:
        if self.feature_names is None:
            raise ItemError(
                "invalid_features",
                "this model was trained without feature names; send an array of numbers",
            )
        missing = [n for n in self.feature_names if n not in value]
        # Unknown keys are refused too: they are usually a misspelt feature, and silently
        # ignoring them would score the item on the wrong data.
        unknown = sorted(k for k in value if k not in set(self.feature_names))
        if missing or unknown:
            parts = [f"missing: {missing}"] if missing else []
            parts += [f"unknown: {unknown}"] if unknown else []
            raise ItemError("invalid_features", "; ".join(parts))
        return [_number(value[n], f"feature {n!r}") for n in self.feature_names]

    def run(self, values: list[list[float]], options: RunOptions) -> list[Any]:
        if not values:
            return []
        features = np.asarray(values, dtype=np.float64).reshape(len(values), self.n_features)
        with warnings.catch_warnings():
            # Fitted on a DataFrame, predicting on an array: we already put columns in
            # feature_names_in_ order, so the warning is about nothing.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            predictions = self.estimator.predict(features)
            probabilities = self.estimator.predict_proba(features) if self._has_proba else None
        if self.task == "regression":
            return [_plain(p) for p in predictions.tolist()]
        keys = [str(c) for c in self._classes]
        outputs = []
        for row, label in enumerate(predictions):
            scores = (
                {}
                if probabilities is None
                else dict(zip(keys, (float(p) for p in probabilities[row]), strict=True))
            )
            outputs.append({"label": _plain(label), "scores": scores})
        return outputs


def load_sklearn_runner(path: str, task: str) -> SklearnRunner:
    estimator = load_skops(path)
    found = _task_of(estimator, path)
    if found != task:
        raise ModelLoadError(f"{path} holds a {found} model, but the model is registered as {task}")
    return SklearnRunner(estimator, task)


def check_skops_file(path: str) -> dict[str, Any]:
    """What the API needs to register an upload; raises ModelLoadError if it is unusable."""
    estimator = load_skops(path)
    task = _task_of(estimator, path)
    runner = SklearnRunner(estimator, task)
    return {"task": task, "n_features": runner.n_features, "feature_names": runner.feature_names}


def load_skops(path: str) -> Any:
    """Load a skops file, trusting only sklearn/numpy/scipy types."""
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path} is not a readable skops file: {exc}") from exc
    refused = [t for t in untrusted if not _is_trusted(t)]
    if refused:
        raise ModelLoadError(f"{path} contains types that are not allowed: {', '.join(refused)}")
    try:
        return skops.io.load(path, trusted=untrusted)
    except Exception as exc:  # skops raises many kinds; the job only needs "cannot load"
        raise ModelLoadError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc


def _is_trusted(type_name: str) -> bool:
    return type_name.startswith(_TRUSTED_PREFIXES) or type_name in _TRUSTED_NAMES


def _task_of(estimator: Any, path: str) -> str:
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(f"{path} holds a {type(estimator).__name__}, which cannot predict")
    if not hasattr(estimator, "n_features_in_"):
        raise ModelLoadError(
            f"{path}: {type(estimator).__name__} is not fitted on numeric features "
            "(no n_features_in_)"
        )
    if is_classifier(estimator):
        if isinstance(getattr(estimator, "classes_", None), list):
            raise ModelLoadError(f"{path}: multi-output classifiers are not supported")
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise ModelLoadError(f"{path}: {type(estimator).__name__} is neither classifier nor regressor")


def _number(value: Any, what: str) -> float:
    # bool is an int in Python, but true/false in JSON is never a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ItemError("invalid_features", f"{what} must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError as exc:
        raise ItemError("invalid_features", f"{what} is too large") from exc
    if not math.isfinite(number):
        # One NaN would make most estimators reject the whole vectorised batch.
        raise ItemError("invalid_features", f"{what} must be finite")
    return number


def _plain(value: Any) -> Any:
    """numpy scalars (and nested lists of them) as JSON-native Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
