"""A scikit-learn model's widths, checked against the arrays it holds before any probe.

A skops file is data, and so are the numbers in it: a 5 KB DummyClassifier saying
`n_features_in_ = 150_000_000` made the validation probe build a row that wide (3.1 GB), and a
3.5 KB DummyRegressor saying `n_outputs_ = 20_000_000` answered every item with 20 million
numbers. Widths an estimator declares must agree with the fitted arrays that carry them
(coefficients, constants, trees, class lists) and stay under a limit; an estimator made of
others (ensembles, pipelines) has each part checked, and its count of parts bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.runtime.base import ModelLoadError


@dataclass(frozen=True)
class WidthLimits:
    max_features: int
    max_outputs: int  # outputs of a regressor, classes of a classifier: both make output lines
    max_estimators: int


#: The settings' defaults (MODEL_MAX_FEATURES, MODEL_MAX_OUTPUTS, MODEL_MAX_ESTIMATORS).
DEFAULT_WIDTHS = WidthLimits(max_features=100_000, max_outputs=10_000, max_estimators=10_000)


def check_widths(estimator: Any, limits: WidthLimits, depth: int = 0) -> None:
    """ModelLoadError when a declared width is over a limit or disagrees with the arrays."""
    name = type(estimator).__name__
    features = _count(estimator, "n_features_in_", limits.max_features, name)
    outputs = _count(estimator, "n_outputs_", limits.max_outputs, name)
    names = getattr(estimator, "feature_names_in_", None)
    if features is not None and names is not None:
        _agree(len(names), features, f"{name}: feature_names_in_", "n_features_in_")
    classes = getattr(estimator, "classes_", None)
    if isinstance(classes, np.ndarray):
        _within(classes.size, limits.max_outputs, f"{name}: classes")
        prior = getattr(estimator, "class_prior_", None)
        if isinstance(prior, np.ndarray):
            _agree(prior.size, classes.size, f"{name}: class_prior_", "classes_")
    coef = getattr(estimator, "coef_", None)
    if isinstance(coef, np.ndarray) and features is not None and coef.ndim >= 1:
        _agree(coef.shape[-1], features, f"{name}: coef_", "n_features_in_")
    constant = getattr(estimator, "constant_", None)
    if isinstance(constant, np.ndarray) and outputs is not None:
        _agree(constant.size, outputs, f"{name}: constant_", "n_outputs_")
    tree = getattr(estimator, "tree_", None)
    if tree is not None:
        if features is not None:
            _agree(int(tree.n_features), features, f"{name}: tree_", "n_features_in_")
        if outputs is not None:
            _agree(int(tree.n_outputs), outputs, f"{name}: tree_", "n_outputs_")
    if depth < 8:
        for part in _parts(estimator, limits, name):
            check_widths(part, limits, depth + 1)


def _parts(estimator: Any, limits: WidthLimits, name: str) -> list[Any]:
    """The estimators this one is made of (an ensemble's, a pipeline's steps)."""
    found: list[Any] = []
    for attribute in ("estimators_", "estimator_", "base_estimator_", "steps"):
        value = getattr(estimator, attribute, None)
        if value is None:
            continue
        if isinstance(value, np.ndarray):  # a gradient boosting's grid of trees
            flat = list(value.ravel())
        else:
            flat = list(value) if isinstance(value, list | tuple) else [value]
        _within(len(flat), limits.max_estimators, f"{name}: {attribute}")
        for item in flat:
            part = item[1] if isinstance(item, tuple) and len(item) == 2 else item
            if hasattr(part, "get_params"):
                found.append(part)
    declared = getattr(estimator, "n_estimators", None)
    fitted = getattr(estimator, "estimators_", None)
    if isinstance(declared, int) and isinstance(fitted, list) and len(fitted) != declared:
        raise ModelLoadError(f"{name}: n_estimators is {declared}, but it holds {len(fitted)}")
    return found


def _count(estimator: Any, attribute: str, limit: int, name: str) -> int | None:
    value = getattr(estimator, attribute, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ModelLoadError(f"{name}: {attribute} must be a whole number")
    if value < 1:
        raise ModelLoadError(f"{name}: {attribute} must be at least 1, not {value}")
    _within(int(value), limit, f"{name}: {attribute}")
    return int(value)


def _within(value: int, limit: int, what: str) -> None:
    if value > limit:
        raise ModelLoadError(f"{what} is {value:,}; the limit is {limit:,}")


def _agree(held: int, declared: int, what: str, attribute: str) -> None:
    if held != declared:
        raise ModelLoadError(f"{what} holds {held:,}, but {attribute} says {declared:,}")
