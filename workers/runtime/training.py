"""Training jobs: checking their params, reading their examples, fitting scikit-learn models.

Everything here can be imported by the API for submit-time checks: scikit-learn is imported,
torch is not (fine-tuning lives in workers.runtime.finetune). Estimators come from a fixed
allowlist by name; nothing is ever imported from a path a user wrote.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import ensemble, linear_model, neighbors, tree
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split


class TrainingError(Exception):
    """A training job that cannot run; code and message go on the job as its error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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
        raise TrainingError("invalid_params", f"params.estimator {what}; use one of: {allowed}")
    hyperparameters = params.get("hyperparameters")
    if hyperparameters is None:
        hyperparameters = {}
    _require_object(hyperparameters, "params.hyperparameters")
    estimator_class, _ = SKLEARN_ESTIMATORS[name]
    valid = sorted(estimator_class().get_params(deep=False))
    for key in hyperparameters:
        if key in _RESERVED_HYPERPARAMETERS:
            reason = _RESERVED_HYPERPARAMETERS[key]
            raise TrainingError("invalid_params", f"hyperparameter {key!r} cannot be set: {reason}")
        if key not in valid:
            raise TrainingError(
                "invalid_params",
                f"{name} has no hyperparameter {key!r}; valid ones: {', '.join(valid)}",
            )
    for key, value in hyperparameters.items():
        _check_bounds(name, key, value)
    fixed = _FIXED_HYPERPARAMETERS.get(name, {})
    for key, value in fixed.items():
        if hyperparameters.get(key, value) != value:
            raise TrainingError(
                "invalid_params", f"{name} hyperparameter {key!r} must be {value!r} on this farm"
            )
    hyperparameters = {**hyperparameters, **fixed}
    estimator = estimator_class(**hyperparameters)
    validate = getattr(estimator, "_validate_params", None)
    if validate is not None:  # scikit-learn >= 1.2 checks types and ranges without fitting
        try:
            validate()
        except (TypeError, ValueError) as exc:  # InvalidParameterError is both
            raise TrainingError("invalid_params", f"{name}: {exc}") from exc
    return {
        "estimator": name,
        "hyperparameters": dict(hyperparameters),
        "validation_split": _split(params.get("validation_split", 0.2)),
        "seed": _int_in(params.get("seed", 0), "seed", 0, _MAX_SEED),
    }


def _check_bounds(estimator: str, key: str, value: Any, depth: int = 0) -> None:
    """Numbers within bounds, however deeply nested (class_weight is a dict, say)."""
    if depth > 4:
        raise TrainingError("invalid_params", f"hyperparameter {key!r} is nested too deeply")
    if isinstance(value, list | tuple):
        for item in value:
            _check_bounds(estimator, key, item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _check_bounds(estimator, key, item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise TrainingError("invalid_params", f"hyperparameter {key!r} must be finite")
    elif isinstance(value, int) and not isinstance(value, bool):
        low, high = _HYPERPARAMETER_BOUNDS.get(key, (-_MAX_INT, _MAX_INT))
        if not low <= value <= high:
            raise TrainingError(
                "invalid_params",
                f"{estimator} hyperparameter {key!r} must be from {low} to {high}, not {value}",
            )


def check_finetune_params(params: dict[str, Any]) -> dict[str, Any]:
    """Submit-time check for transformers fine-tuning, with defaults filled in."""
    _require_object(params, "params")
    _refuse_unknown_keys(params, {"base_model", *_FINETUNE_DEFAULTS})
    base_model = params.get("base_model")
    if not isinstance(base_model, str) or not base_model.strip():
        raise TrainingError("invalid_params", "params.base_model is required (a model name)")
    merged = {**_FINETUNE_DEFAULTS, **params}
    learning_rate = merged["learning_rate"]
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, int | float)
        or not 0 < learning_rate <= 1
    ):
        raise TrainingError(
            "invalid_params", f"learning_rate must be a number in (0, 1], not {learning_rate!r}"
        )
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
        raise TrainingError("invalid_params", f"{what} must be an object")


def _refuse_unknown_keys(params: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise TrainingError(
            "invalid_params",
            f"unknown params {unknown}; allowed: {', '.join(sorted(known))}",
        )


def _int_in(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainingError(
            "invalid_params", f"{name} must be a whole number from {low} to {high}, not {value!r}"
        )
    return value


def _split(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= _MAX_VALIDATION_SPLIT
    ):
        raise TrainingError(
            "invalid_params",
            f"validation_split must be a number from 0 to {_MAX_VALIDATION_SPLIT}, not {value!r}",
        )
    return float(value)


@dataclass
class Examples:
    """The examples of a training file, checked line by line."""

    inputs: list[Any]  #: feature vectors (in feature_names order when named) or texts
    labels: list[Any]
    feature_names: list[str] | None = None  #: set when inputs were objects of named features


def read_examples(lines: Iterable[bytes | str | None], kind: str) -> Examples:
    """Read JSON lines {"input": ..., "label": ...}; kind is "features" or "text".

    Named features become vectors in the first line's key order, so every later step (and the
    saved estimator's feature_names_in_) agrees on one column order.
    """
    if kind not in ("features", "text"):
        raise ValueError(f"unknown kind {kind!r}")
    examples = Examples(inputs=[], labels=[])
    width: int | None = None
    for number, raw in enumerate(lines, start=1):
        if raw is None:  # over the line limit (workers.runtime.items.read_lines)
            raise _bad_line(number, "the line is too long")
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise _bad_line(number, f"not UTF-8 text ({exc.reason})") from exc
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_refuse_constant)
        except RecursionError:
            raise _bad_line(number, "invalid JSON: nested too deeply") from None
        except ValueError as exc:
            raise _bad_line(number, f"invalid JSON: {str(exc)[:200]}") from None
        if not isinstance(record, dict):
            raise _bad_line(number, "expected a JSON object with input and label")
        for key in ("input", "label"):
            if key not in record:
                raise _bad_line(number, f'missing "{key}"')
        label = record["label"]
        if label is None:
            raise _bad_line(number, "label is null")
        if isinstance(label, list | dict) or (
            isinstance(label, int) and not isinstance(label, bool) and abs(label) > 2**53
        ):
            raise _bad_line(number, f"label must be a string or a number, not {_brief(label)}")
        if kind == "text":
            value: Any = _text(record["input"], number)
        else:
            value = _features(record["input"], number, examples)
            if width is None:
                width = len(value)
            elif len(value) != width:
                raise _bad_line(number, f"input has {len(value)} features; line 1 had {width}")
        examples.inputs.append(value)
        examples.labels.append(label)
    if not examples.inputs:
        raise TrainingError("invalid_training_data", "the training file has no examples")
    return examples


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bad_line(number: int, message: str) -> TrainingError:
    return TrainingError("invalid_training_data", f"line {number}: {message}")


def _text(value: Any, number: int) -> str:
    if not isinstance(value, str):
        raise _bad_line(number, f"input must be a string, not {type(value).__name__}")
    if not value.strip():
        raise _bad_line(number, "input is an empty string")
    return value


def _features(value: Any, number: int, examples: Examples) -> list[float]:
    first = not examples.inputs
    if isinstance(value, dict):
        if first:
            examples.feature_names = [str(k) for k in value]
        names = examples.feature_names
        if names is None:
            raise _bad_line(number, "input is an object, but earlier lines had arrays")
        if set(value) != set(names):
            missing = sorted(set(names) - set(value))
            unknown = sorted(set(value) - set(names))
            raise _bad_line(
                number, f"input keys differ from line 1 (missing {missing}, unknown {unknown})"
            )
        values = [value[n] for n in names]
    elif isinstance(value, list):
        if examples.feature_names is not None:
            raise _bad_line(number, "input is an array, but earlier lines had named features")
        values = value
    else:
        raise _bad_line(number, "input must be an array of numbers or an object of named numbers")
    if not values:
        raise _bad_line(number, "input has no features")
    floats = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise _bad_line(number, f"features must be numbers, not {_brief(item)}")
        try:
            as_float = float(item)
        except OverflowError:
            as_float = math.inf
        if not math.isfinite(as_float):
            raise _bad_line(number, "features must be finite numbers")
        floats.append(as_float)
    return floats


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def split_indices(
    labels: Sequence[Any], validation_split: float, seed: int, stratify: bool
) -> tuple[list[int], list[int]]:
    """(train, validation) example indices; no validation part when validation_split is 0.

    Stratified only where scikit-learn can do it: every class twice, and room for every class
    on both sides. Otherwise a plain shuffled split, which tiny files need to work at all.
    """
    indices = list(range(len(labels)))
    if validation_split == 0:
        return indices, []
    held_out = math.ceil(validation_split * len(labels))
    if len(labels) - held_out < 1:
        raise TrainingError(
            "invalid_training_data",
            f"{len(labels)} example(s) are too few to hold out a validation split of "
            f"{validation_split}; add examples or set validation_split to 0",
        )
    counts = Counter(labels)
    can_stratify = (
        stratify
        and min(counts.values()) >= 2
        and len(counts) <= min(held_out, len(labels) - held_out)
    )
    train, validation = train_test_split(
        indices,
        test_size=validation_split,
        random_state=seed,
        stratify=list(labels) if can_stratify else None,
    )
    return list(train), list(validation)


@dataclass
class SklearnResult:
    """A fitted estimator and how well it did."""

    estimator: Any
    task: str  #: "classification" | "regression"
    #: accuracy and f1_macro, or r2 and mae; train_examples, validation_examples, evaluated_on
    metrics: dict[str, Any]
    feature_names: list[str] | None
    warnings: list[str] = field(default_factory=list)  #: e.g. a solver that did not converge


def train_sklearn(examples: Examples, params: dict[str, Any]) -> SklearnResult:
    """Fit the named estimator and score it on the held-out split.

    random_state, when the estimator takes one and the job did not set it, is the job's seed,
    so the same job trains the same model twice.
    """
    estimator_class, task = SKLEARN_ESTIMATORS[params["estimator"]]
    x = _feature_matrix(examples)
    y = _classes(examples.labels) if task == CLASSIFICATION else _targets(examples.labels)
    seed = int(params["seed"])
    train, validation = split_indices(
        y.tolist(), params["validation_split"], seed, task == CLASSIFICATION
    )
    if task == CLASSIFICATION and len(set(y[train].tolist())) < 2:
        raise TrainingError(
            "invalid_training_data",
            "after holding out the validation split the training part has only one class; "
            "add examples or lower validation_split",
        )
    hyperparameters = dict(params["hyperparameters"])
    if "random_state" in estimator_class().get_params(deep=False):
        hyperparameters.setdefault("random_state", seed)
    estimator = estimator_class(**hyperparameters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.fit(x[train], y[train])
        except (ValueError, TypeError) as exc:  # e.g. a solver that does not take a penalty
            raise TrainingError(
                "training_failed", f"{params['estimator']}: {type(exc).__name__}: {exc}"
            ) from exc
    evaluated = validation or train
    metrics = _metrics(task, y[evaluated], estimator.predict(x[evaluated]))
    metrics.update(
        train_examples=len(train),
        validation_examples=len(validation),
        evaluated_on="validation" if validation else "training",
    )
    if examples.feature_names is not None:
        # What scikit-learn itself sets when fitted on a DataFrame; the inference runner reads
        # it to map {name: value} items onto columns. Set after scoring: predicting on a plain
        # array with names set warns.
        estimator.feature_names_in_ = np.asarray(examples.feature_names, dtype=object)
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    return SklearnResult(estimator, task, metrics, examples.feature_names, messages)


def _feature_matrix(examples: Examples) -> np.ndarray:
    names = examples.feature_names
    rows = [
        [row[n] for n in names] if isinstance(row, dict) and names is not None else row
        for row in examples.inputs
    ]
    return np.asarray(rows, dtype=np.float64)


def _classes(labels: list[Any]) -> np.ndarray:
    """Class labels as one numpy dtype: all strings, or all whole numbers."""
    if all(isinstance(label, str) for label in labels):
        values: list[Any] = labels
    elif all(isinstance(label, int | float) and float(label).is_integer() for label in labels):
        values = [int(label) for label in labels]
    else:
        raise TrainingError(
            "invalid_training_data",
            "classification labels must be all strings or all whole numbers",
        )
    y = np.asarray(values)
    if len(set(values)) < 2:
        raise TrainingError(
            "invalid_training_data",
            f"the labels have only one class ({values[0]!r}); a classifier needs at least two",
        )
    return y


def _targets(labels: list[Any]) -> np.ndarray:
    for label in labels:
        if isinstance(label, bool) or not isinstance(label, int | float):
            raise TrainingError(
                "invalid_training_data",
                f"regression labels must be numbers, not {label!r}",
            )
    return np.asarray(labels, dtype=np.float64)


def _metrics(task: str, truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    if task == CLASSIFICATION:
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        }
    metrics = {}
    if len(truth) >= 2:  # r2 of a single example is undefined
        metrics["r2"] = float(r2_score(truth, predicted))
    metrics["mae"] = float(mean_absolute_error(truth, predicted))
    return metrics


def save_sklearn(estimator: Any, path: str) -> None:
    """Dump with skops, then load it back the way inference will, so a model that could not be
    served fails its training job instead of every inference job after it."""
    import skops.io

    from workers.runtime.base import ModelLoadError
    from workers.runtime.sklearn import load_skops

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    skops.io.dump(estimator, str(partial))
    try:
        load_skops(str(partial))
    except ModelLoadError as exc:
        partial.unlink(missing_ok=True)
        raise TrainingError("training_failed", f"the trained model cannot be saved: {exc}") from exc
    os.replace(partial, target)
