"""scikit-learn models loaded from skops files, never from pickles.

What a file may contain is decided by workers/runtime/trust.py (named classes and data, nothing
callable); skops is told to trust exactly the types that check let through. Messages never name
the file's path: they reach tenants.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import skops.io
from sklearn.base import is_classifier, is_regressor

from workers.runtime.base import ItemError, ModelLoadError, RunOptions
from workers.runtime.sklearn_bounds import WidthLimits, check_widths
from workers.runtime.trust import UntrustedModel, audit_skops, check_structure

_PLAIN_NUMBERS = frozenset({float, int})  # by exact type: bool, an int subclass, is not one

#: A skops file's arrays may unpack to at most this many bytes (a zip bomb stops here).
DEFAULT_MAX_UNPACKED_BYTES = 4 * 1024**3


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
        if (
            type(value) is list
            and len(value) == self.n_features
            and _PLAIN_NUMBERS.issuperset(map(type, value))
            and math.isfinite(sum(value))
        ):
            # The common case, checked by type (bool is not int here) and one sum: a NaN or an
            # infinity makes it non-finite (as can a huge but finite sum: checked one by one).
            return value
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
        # tolist() turns a whole array into Python numbers at once, not one numpy scalar at a time.
        if self.task == "regression":
            return [_plain(p) for p in predictions.tolist()]
        labels = predictions.tolist()  # Python values, but for an object array's own items
        if predictions.dtype == object:
            labels = [_plain(label) for label in labels]
        if probabilities is None:
            return [{"label": label, "scores": {}} for label in labels]
        keys = [str(c) for c in self._classes]
        rows = np.asarray(probabilities, dtype=np.float64).tolist()
        return [
            {"label": label, "scores": dict(zip(keys, row, strict=True))}
            for label, row in zip(labels, rows, strict=True)
        ]


def load_sklearn_runner(
    path: str, task: str, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
) -> SklearnRunner:
    estimator = load_skops(path, max_unpacked_bytes)
    found = _task_of(estimator)
    if found != task:
        raise ModelLoadError(f"the file holds a {found} model, but it is registered as {task}")
    return SklearnRunner(estimator, task)


def check_skops_file(
    path: str,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    widths: WidthLimits | None = None,
) -> dict[str, Any]:
    """What registration needs to know of an upload; raises ModelLoadError if it is unusable
    (its widths too, before anything runs it: workers/runtime/sklearn_bounds.py)."""
    estimator = load_skops(path, max_unpacked_bytes)
    task = _task_of(estimator)
    if widths is not None:
        check_widths(estimator, widths)
    runner = SklearnRunner(estimator, task)
    return {"task": task, "n_features": runner.n_features, "feature_names": runner.feature_names}


def load_skops(path: str, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> Any:
    """Load a skops file that holds only allowed types, with every native index checked."""
    try:
        trusted = audit_skops(path, max_unpacked_bytes)
        try:
            estimator = skops.io.load(path, trusted=trusted)
        except Exception as exc:  # skops raises many kinds; all mean "cannot load"
            raise UntrustedModel(f"cannot load the file ({type(exc).__name__})") from None
        check_structure(estimator)
    except UntrustedModel as exc:
        raise ModelLoadError(str(exc)) from None
    return estimator


def _task_of(estimator: Any) -> str:
    name = type(estimator).__name__
    if not hasattr(estimator, "predict"):
        raise ModelLoadError(f"the file holds a {name}, which cannot predict")
    if not hasattr(estimator, "n_features_in_"):
        raise ModelLoadError(f"{name} is not fitted on numeric features (no n_features_in_)")
    if is_classifier(estimator):
        if isinstance(getattr(estimator, "classes_", None), list):
            raise ModelLoadError("multi-output classifiers are not supported")
        return "classification"
    if is_regressor(estimator):
        return "regression"
    raise ModelLoadError(f"{name} is neither classifier nor regressor")


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
