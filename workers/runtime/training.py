"""Training jobs: reading their examples and fitting scikit-learn models.

torch is not imported here (fine-tuning lives in workers.runtime.finetune). Which estimators a
job may name, and with which hyperparameters, is decided at submit time (app/training_params.py);
the caller hands train_sklearn the estimator class that name stands for, so nothing is ever
imported from a path a user wrote.
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
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

from workers.runtime.items import json_error_words


class TrainingError(Exception):
    """A training job that cannot run; code and message go on the job as its error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


CLASSIFICATION = "classification"
REGRESSION = "regression"


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
        except json.JSONDecodeError as exc:  # where it broke, in words
            raise TrainingError("invalid_training_data", json_error_words(number, exc)) from None
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


def train_sklearn(
    examples: Examples, params: dict[str, Any], estimator_class: type[Any], task: str
) -> SklearnResult:
    """Fit `estimator_class` (what params.estimator names) and score it on the held-out split.

    params are app/training_params.check_sklearn_params' output. random_state, when the
    estimator takes one and the job did not set it, is the job's seed, so the same job trains
    the same model twice.
    """
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
