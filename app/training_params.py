"""What a training job may ask for, checked when it is submitted.

The estimators a job may name (a fixed allowlist: nothing is ever imported from a path a user
wrote), the hyperparameters the farm decides or bounds, and the fine-tuning knobs with their
defaults. The API refuses here what would only fail once a worker had read the whole file; the
worker fits the class the name stands for (workers/runtime/training.py), from the params as
normalised here. scikit-learn is imported (its estimators validate their own parameters);
torch is not.
"""

from __future__ import annotations

import math
from typing import Any

from sklearn import ensemble, linear_model, neighbors, tree

from app.services.errors import InvalidRequest


class InvalidParams(InvalidRequest):
    code = "invalid_params"


CLASSIFICATION = "classification"
REGRESSION = "regression"

#: name in params.estimator -> (estimator class, task)
SKLEARN_ESTIMATORS: dict[str, tuple[type[Any], str]] = {
    "logistic_regression": (linear_model.LogisticRegression, CLASSIFICATION),
    "ridge_classifier": (linear_model.RidgeClassifier, CLASSIFICATION),
    "sgd_classifier": (linear_model.SGDClassifier, CLASSIFICATION),
    "random_forest": (ensemble.RandomForestClassifier, CLASSIFICATION),
    "extra_trees": (ensemble.ExtraTreesClassifier, CLASSIFICATION),
    "gradient_boosting": (ensemble.GradientBoostingClassifier, CLASSIFICATION),
    "hist_gradient_boosting": (ensemble.HistGradientBoostingClassifier, CLASSIFICATION),
    "decision_tree": (tree.DecisionTreeClassifier, CLASSIFICATION),
    "k_neighbors": (neighbors.KNeighborsClassifier, CLASSIFICATION),
    "linear_regression": (linear_model.LinearRegression, REGRESSION),
    "ridge": (linear_model.Ridge, REGRESSION),
    "lasso": (linear_model.Lasso, REGRESSION),
    "elastic_net": (linear_model.ElasticNet, REGRESSION),
    "sgd_regressor": (linear_model.SGDRegressor, REGRESSION),
    "random_forest_regressor": (ensemble.RandomForestRegressor, REGRESSION),
    "extra_trees_regressor": (ensemble.ExtraTreesRegressor, REGRESSION),
    "gradient_boosting_regressor": (ensemble.GradientBoostingRegressor, REGRESSION),
    "hist_gradient_boosting_regressor": (ensemble.HistGradientBoostingRegressor, REGRESSION),
    "decision_tree_regressor": (tree.DecisionTreeRegressor, REGRESSION),
    "k_neighbors_regressor": (neighbors.KNeighborsRegressor, REGRESSION),
}

# The worker sizes its own thread pools (configure_threads); n_jobs=-1 from a job would make
# one training job take every core from the other worker processes on the machine.
_RESERVED_HYPERPARAMETERS = {"n_jobs": "the worker decides how many cores a job uses"}
# Estimators whose search index the farm fixes: KD/ball trees are native index structures that
# an uploaded file could corrupt, so the loader accepts brute-force neighbours only, and
# models the farm trains must load through that same loader.
_FIXED_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "k_neighbors": {"algorithm": "brute"},
    "k_neighbors_regressor": {"algorithm": "brute"},
}
# Upper bounds on what makes a fit slow or large; scikit-learn itself accepts any size.
_HYPERPARAMETER_BOUNDS: dict[str, tuple[int, int]] = {
    "n_estimators": (1, 2000),
    "max_iter": (1, 100_000),
    "max_depth": (1, 200),
    "max_leaf_nodes": (2, 1_000_000),
    "n_neighbors": (1, 10_000),
    "n_iter_no_change": (1, 10_000),
    "max_features": (1, 1_000_000),
}
_MAX_INT = 2**32  # any other integer hyperparameter (random_state, verbose ...)
_MAX_SEED = 2**32 - 1  # numpy's RandomState limit
_MAX_VALIDATION_SPLIT = 0.5

_SKLEARN_KEYS = {"estimator", "hyperparameters", "validation_split", "seed"}
_FINETUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "learning_rate": 5e-5,
    "batch_size": 16,
    "validation_split": 0.2,
    "max_length": 128,
    "seed": 0,
}


def check_sklearn_params(params: dict[str, Any]) -> dict[str, Any]:
    """Refuse at submit time what would only fail once a worker has read the whole file."""
    _require_object(params, "params")
    _refuse_unknown_keys(params, _SKLEARN_KEYS)
    name = params.get("estimator")
    allowed = ", ".join(sorted(SKLEARN_ESTIMATORS))
    if not isinstance(name, str) or name not in SKLEARN_ESTIMATORS:
        what = "is required" if name is None else f"{name!r} is not supported"
        raise InvalidParams(f"params.estimator {what}; use one of: {allowed}")
    hyperparameters = params.get("hyperparameters")
    if hyperparameters is None:
        hyperparameters = {}
    _require_object(hyperparameters, "params.hyperparameters")
    estimator_class, _ = SKLEARN_ESTIMATORS[name]
    valid = sorted(estimator_class().get_params(deep=False))
    for key in hyperparameters:
        if key in _RESERVED_HYPERPARAMETERS:
            reason = _RESERVED_HYPERPARAMETERS[key]
            raise InvalidParams(f"hyperparameter {key!r} cannot be set: {reason}")
        if key not in valid:
            raise InvalidParams(
                f"{name} has no hyperparameter {key!r}; valid ones: {', '.join(valid)}",
            )
    for key, value in hyperparameters.items():
        _check_bounds(name, key, value)
    fixed = _FIXED_HYPERPARAMETERS.get(name, {})
    for key, value in fixed.items():
        if hyperparameters.get(key, value) != value:
            raise InvalidParams(f"{name} hyperparameter {key!r} must be {value!r} on this farm")
    hyperparameters = {**hyperparameters, **fixed}
    estimator = estimator_class(**hyperparameters)
    validate = getattr(estimator, "_validate_params", None)
    if validate is not None:  # scikit-learn >= 1.2 checks types and ranges without fitting
        try:
            validate()
        except (TypeError, ValueError) as exc:  # InvalidParameterError is both
            raise InvalidParams(f"{name}: {exc}") from exc
    return {
        "estimator": name,
        "hyperparameters": dict(hyperparameters),
        "validation_split": _split(params.get("validation_split", 0.2)),
        "seed": _int_in(params.get("seed", 0), "seed", 0, _MAX_SEED),
    }


def _check_bounds(estimator: str, key: str, value: Any, depth: int = 0) -> None:
    """Numbers within bounds, however deeply nested (class_weight is a dict, say)."""
    if depth > 4:
        raise InvalidParams(f"hyperparameter {key!r} is nested too deeply")
    if isinstance(value, list | tuple):
        for item in value:
            _check_bounds(estimator, key, item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _check_bounds(estimator, key, item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidParams(f"hyperparameter {key!r} must be finite")
    elif isinstance(value, int) and not isinstance(value, bool):
        low, high = _HYPERPARAMETER_BOUNDS.get(key, (-_MAX_INT, _MAX_INT))
        if not low <= value <= high:
            raise InvalidParams(
                f"{estimator} hyperparameter {key!r} must be from {low} to {high}, not {value}",
            )


def check_finetune_params(params: dict[str, Any]) -> dict[str, Any]:
    """Submit-time check for transformers fine-tuning, with defaults filled in."""
    _require_object(params, "params")
    _refuse_unknown_keys(params, {"base_model", *_FINETUNE_DEFAULTS})
    base_model = params.get("base_model")
    if not isinstance(base_model, str) or not base_model.strip():
        raise InvalidParams("params.base_model is required (a model name)")
    merged = {**_FINETUNE_DEFAULTS, **params}
    learning_rate = merged["learning_rate"]
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, int | float)
        or not 0 < learning_rate <= 1
    ):
        raise InvalidParams(f"learning_rate must be a number in (0, 1], not {learning_rate!r}")
    return {
        "base_model": base_model,
        "epochs": _int_in(merged["epochs"], "epochs", 1, 50),
        "learning_rate": float(learning_rate),
        "batch_size": _int_in(merged["batch_size"], "batch_size", 1, 512),
        "validation_split": _split(merged["validation_split"]),
        "max_length": _int_in(merged["max_length"], "max_length", 8, 512),
        "seed": _int_in(merged["seed"], "seed", 0, _MAX_SEED),
    }


def _require_object(value: Any, what: str) -> None:
    if not isinstance(value, dict):
        raise InvalidParams(f"{what} must be an object")


def _refuse_unknown_keys(params: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParams(
            f"unknown params {unknown}; allowed: {', '.join(sorted(known))}",
        )


def _int_in(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParams(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _split(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= _MAX_VALIDATION_SPLIT
    ):
        raise InvalidParams(
            f"validation_split must be a number from 0 to {_MAX_VALIDATION_SPLIT}, not {value!r}",
        )
    return float(value)
