from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split

from app.training_params import (
    SKLEARN_ESTIMATORS,
    InvalidParams,
    check_finetune_params,
    check_sklearn_params,
)
from tests.factories import make_tiny_feature_extractor, make_tiny_text_classifier
from workers.runtime import RunOptions, Stopped, builtin_path, check_skops_file
from workers.runtime.finetune import finetune
from workers.runtime.sklearn import load_sklearn_runner
from workers.runtime.text import load_text_classifier
from workers.runtime.training import (
    Examples,
    TrainingError,
    read_examples,
    save_sklearn,
    split_indices,
    train_sklearn,
)

OPTIONS = RunOptions()
NAMES = ["age", "income", "tenure"]


def _data(n: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, 3 string classes and a numeric target that the features explain."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    score = x @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.3, size=n)
    classes = np.array(["low", "mid", "high"])[
        np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    ]
    return x, classes, score


def _lines(inputs: list[Any], labels: list[Any]) -> list[str]:
    return [json.dumps({"input": i, "label": lab}) for i, lab in zip(inputs, labels, strict=True)]


# -- params ----------------------------------------------------------------------------------


def test_good_sklearn_params_are_normalised() -> None:
    assert check_sklearn_params({"estimator": "random_forest"}) == {
        "estimator": "random_forest",
        "hyperparameters": {},
        "validation_split": 0.2,
        "seed": 0,
    }
    params = {
        "estimator": "ridge",
        "hyperparameters": {"alpha": 2},
        "validation_split": 0,
        "seed": 3,
    }
    assert check_sklearn_params(params) == {**params, "validation_split": 0.0}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["estimator is required", "logistic_regression", "gradient_boosting_regressor"]),
        ({"estimator": "svc"}, ["'svc' is not supported", "random_forest", "ridge"]),
        ({"estimator": "ridge", "hyperparameters": {"alhpa": 1}}, ["'alhpa'", "alpha, copy_X"]),
        ({"estimator": "ridge", "hyperparameters": {"alpha": -1.0}}, ["alpha", "-1.0"]),
        ({"estimator": "random_forest", "hyperparameters": {"n_estimators": "many"}}, ["many"]),
        ({"estimator": "random_forest", "hyperparameters": {"n_jobs": -1}}, ["'n_jobs'"]),
        ({"estimator": "ridge", "hyperparameters": [1]}, ["hyperparameters must be an object"]),
        ({"estimator": "ridge", "validation_split": 0.6}, ["validation_split", "0.6"]),
        ({"estimator": "ridge", "validation_split": -0.1}, ["validation_split"]),
        ({"estimator": "ridge", "validation_split": "0.2"}, ["validation_split"]),
        ({"estimator": "ridge", "seed": 1.5}, ["seed"]),
        ({"estimator": "ridge", "epochs": 3}, ["unknown params ['epochs']", "hyperparameters"]),
        ([], ["params must be an object"]),
    ],
)
def test_bad_sklearn_params_say_what_is_wrong(params: Any, expected: list[str]) -> None:
    with pytest.raises(InvalidParams) as info:
        check_sklearn_params(params)
    assert info.value.code == "invalid_params"
    for part in expected:
        assert part in info.value.message


def test_finetune_params_get_defaults() -> None:
    assert check_finetune_params({"base_model": "minilm"}) == {
        "base_model": "minilm",
        "epochs": 3,
        "learning_rate": 5e-5,
        "batch_size": 16,
        "validation_split": 0.2,
        "max_length": 128,
        "seed": 0,
    }
    checked = check_finetune_params({"base_model": "m", "learning_rate": 1, "epochs": 50})
    assert checked["learning_rate"] == 1.0 and type(checked["learning_rate"]) is float


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({}, "base_model"),
        ({"base_model": " "}, "base_model"),
        ({"base_model": "m", "epochs": 0}, "epochs"),
        ({"base_model": "m", "epochs": 51}, "epochs"),
        ({"base_model": "m", "epochs": 2.0}, "epochs"),
        ({"base_model": "m", "learning_rate": 0}, "learning_rate"),
        ({"base_model": "m", "learning_rate": 2}, "learning_rate"),
        ({"base_model": "m", "batch_size": 513}, "batch_size"),
        ({"base_model": "m", "batch_size": True}, "batch_size"),
        ({"base_model": "m", "validation_split": 0.51}, "validation_split"),
        ({"base_model": "m", "max_length": 4}, "max_length"),
        ({"base_model": "m", "seed": "1"}, "seed"),
        ({"base_model": "m", "estimator": "ridge"}, "estimator"),
    ],
)
def test_bad_finetune_params_are_refused(params: dict[str, Any], word: str) -> None:
    with pytest.raises(InvalidParams) as info:
        check_finetune_params(params)
    assert info.value.code == "invalid_params" and word in info.value.message


# -- reading examples ------------------------------------------------------------------------

GOOD_FEATURES = '{"input": [1, 2.5], "label": "a"}'
GOOD_NAMED = '{"input": {"x": 1, "y": 2}, "label": "a"}'
GOOD_TEXT = '{"input": "hello", "label": "a"}'


@pytest.mark.parametrize(
    ("first", "bad", "kind", "words"),
    [
        (GOOD_FEATURES, '{"input": [1, 2], "label": "a"', "features", "not valid JSON"),
        (GOOD_FEATURES, "[1, 2]", "features", "JSON object"),
        (GOOD_FEATURES, '{"label": "a"}', "features", 'missing "input"'),
        (GOOD_FEATURES, '{"input": [1, 2]}', "features", 'missing "label"'),
        (GOOD_FEATURES, '{"input": [1, 2], "label": null}', "features", "label is null"),
        (GOOD_FEATURES, '{"input": [1, 2], "label": [1]}', "features", "label must be"),
        (GOOD_FEATURES, '{"input": "1, 2", "label": "a"}', "features", "array of numbers"),
        (GOOD_FEATURES, '{"input": [1, true], "label": "a"}', "features", "must be numbers"),
        (GOOD_FEATURES, '{"input": [1, "2"], "label": "a"}', "features", "must be numbers"),
        (GOOD_FEATURES, '{"input": [1, NaN], "label": "a"}', "features", "NaN is not valid JSON"),
        (GOOD_FEATURES, '{"input": [1, 1e999], "label": "a"}', "features", "finite"),
        (GOOD_FEATURES, '{"input": [1, 1' + "0" * 400 + '], "label": "a"}', "features", "finite"),
        (GOOD_FEATURES, "[" * 100_000 + "]" * 100_000, "features", "nested too deeply"),
        (GOOD_FEATURES, '{"input": [1, 2, 3], "label": "a"}', "features", "3 features"),
        (GOOD_FEATURES, '{"input": {"x": 1, "y": 2}, "label": "a"}', "features", "array"),
        (GOOD_NAMED, '{"input": {"x": 1, "z": 2}, "label": "a"}', "features", "['z']"),
        (GOOD_NAMED, '{"input": [1, 2], "label": "a"}', "features", "named features"),
        (GOOD_TEXT, '{"input": ["hello"], "label": "a"}', "text", "must be a string"),
        (GOOD_TEXT, '{"input": "  ", "label": "a"}', "text", "empty"),
        (GOOD_TEXT, b'{"input": "\xff", "label": "a"}', "text", "UTF-8"),
    ],
)
def test_bad_lines_are_reported_with_their_number(
    first: str, bad: str | bytes, kind: str, words: str
) -> None:
    # The blank line still counts, so the bad one is line 3 of the file.
    with pytest.raises(TrainingError) as info:
        read_examples([first, "", bad, first], kind)
    assert info.value.code == "invalid_training_data"
    # The line of the file, and for a line that does not parse the column where it broke.
    assert re.match(r"line 3(: |, column \d+: )", info.value.message), info.value.message
    assert words in info.value.message


@pytest.mark.parametrize("lines", [[], [b"", b"  \n", "\n"]])
def test_a_file_without_examples_is_refused(lines: list[Any]) -> None:
    with pytest.raises(TrainingError, match="the training file has no examples"):
        read_examples(lines, "text")


def test_named_features_become_vectors_in_first_line_order() -> None:
    lines = [
        b'{"input": {"b": 1, "a": 2}, "label": 1}\n',
        '{"input": {"a": 3, "b": 4}, "label": 0}',
    ]
    examples = read_examples(lines, "features")
    assert examples == Examples(
        inputs=[[1.0, 2.0], [4.0, 3.0]], labels=[1, 0], feature_names=["b", "a"]
    )


# -- scikit-learn ----------------------------------------------------------------------------


def test_classifier_metrics_match_sklearn_on_the_same_split() -> None:
    x, classes, _ = _data()
    examples = read_examples(_lines(x.tolist(), classes.tolist()), "features")
    params = check_sklearn_params(
        {
            "estimator": "logistic_regression",
            "hyperparameters": {"C": 0.5},
            "validation_split": 0.25,
            "seed": 7,
        }
    )
    result = _train(examples, params)

    x_train, x_val, y_train, y_val = train_test_split(
        x, classes, test_size=0.25, random_state=7, stratify=classes
    )
    predicted = LogisticRegression(C=0.5).fit(x_train, y_train).predict(x_val)
    assert result.task == "classification" and result.feature_names is None
    assert result.metrics == {
        "accuracy": pytest.approx(accuracy_score(y_val, predicted), abs=1e-12),
        "f1_macro": pytest.approx(f1_score(y_val, predicted, average="macro"), abs=1e-12),
        "train_examples": 67,
        "validation_examples": 23,
        "evaluated_on": "validation",
    }
    assert result.metrics["accuracy"] > 0.7  # learnable data, so the split lined up
    assert all(type(result.metrics[k]) is float for k in ("accuracy", "f1_macro"))
    json.dumps(result.metrics)


def test_seed_is_the_default_random_state() -> None:
    x, classes, _ = _data()
    examples = read_examples(_lines(x.tolist(), classes.tolist()), "features")
    params = check_sklearn_params(
        {"estimator": "random_forest", "hyperparameters": {"n_estimators": 5}, "seed": 11}
    )
    result = _train(examples, params)
    x_train, x_val, y_train, y_val = train_test_split(
        x, classes, test_size=0.2, random_state=11, stratify=classes
    )
    expected = RandomForestClassifier(n_estimators=5, random_state=11).fit(x_train, y_train)
    assert result.estimator.random_state == 11
    assert result.metrics["accuracy"] == accuracy_score(y_val, expected.predict(x_val))
    assert (result.estimator.predict(x) == expected.predict(x)).all()


def test_regressor_metrics_match_sklearn_on_the_same_split() -> None:
    x, _, score = _data()
    examples = read_examples(_lines(x.tolist(), score.tolist()), "features")
    params = check_sklearn_params(
        {
            "estimator": "ridge",
            "hyperparameters": {"alpha": 3.0},
            "validation_split": 0.3,
            "seed": 5,
        }
    )
    result = _train(examples, params)
    x_train, x_val, y_train, y_val = train_test_split(x, score, test_size=0.3, random_state=5)
    predicted = Ridge(alpha=3.0).fit(x_train, y_train).predict(x_val)
    assert result.task == "regression"
    assert result.metrics == {
        "r2": pytest.approx(r2_score(y_val, predicted), abs=1e-12),
        "mae": pytest.approx(mean_absolute_error(y_val, predicted), abs=1e-12),
        "train_examples": 63,
        "validation_examples": 27,
        "evaluated_on": "validation",
    }
    assert result.metrics["r2"] > 0.9


def test_no_validation_split_scores_on_the_training_data() -> None:
    x, _, score = _data()
    examples = read_examples(_lines(x.tolist(), score.tolist()), "features")
    params = check_sklearn_params({"estimator": "linear_regression", "validation_split": 0})
    result = _train(examples, params)
    assert result.metrics["evaluated_on"] == "training"
    assert result.metrics["train_examples"] == 90 and result.metrics["validation_examples"] == 0
    assert result.metrics["r2"] == pytest.approx(r2_score(score, result.estimator.predict(x)))


@pytest.mark.parametrize(
    ("estimator", "labels", "words"),
    [
        ("logistic_regression", ["only"] * 6, "only one class"),
        ("logistic_regression", ["a", "b", 1, "a", "b", 1], "all strings or all whole numbers"),
        ("logistic_regression", [0.5, 1.0, 0.5, 1.0, 0.5, 1.0], "whole numbers"),
        ("ridge", [1.0, 2.0, "three", 4.0, 5.0, 6.0], "regression labels must be numbers"),
    ],
)
def test_unusable_labels_are_refused(estimator: str, labels: list[Any], words: str) -> None:
    examples = Examples(inputs=[[float(i), 1.0] for i in range(6)], labels=labels)
    with pytest.raises(TrainingError) as info:
        _train(examples, check_sklearn_params({"estimator": estimator}))
    assert info.value.code == "invalid_training_data" and words in info.value.message


def test_hyperparameters_rejected_at_fit_fail_the_job() -> None:
    x, classes, _ = _data()
    examples = Examples(inputs=x.tolist(), labels=classes.tolist())
    params = check_sklearn_params(
        {
            "estimator": "logistic_regression",
            "hyperparameters": {"solver": "lbfgs", "l1_ratio": 1.0},
        }
    )
    with pytest.raises(TrainingError) as info:
        _train(examples, params)
    assert info.value.code == "training_failed" and "logistic_regression" in info.value.message


# Predicting on a plain array with the estimator itself warns about its feature names.
@pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning")
def test_model_trained_on_named_features_serves_objects_and_arrays(tmp_path: Path) -> None:
    x, classes, _ = _data()
    named = [dict(zip(NAMES, row, strict=True)) for row in x.tolist()]
    examples = read_examples(_lines(named, classes.tolist()), "features")
    result = _train(examples, check_sklearn_params({"estimator": "logistic_regression"}))
    assert result.feature_names == NAMES and result.warnings == []
    path = tmp_path / "models" / "clf.skops"
    save_sklearn(result.estimator, str(path))
    assert [p.name for p in path.parent.iterdir()] == ["clf.skops"]
    assert check_skops_file(str(path))["feature_names"] == NAMES

    runner = load_sklearn_runner(str(path), "classification")
    reordered = [dict(reversed(list(item.items()))) for item in named[:10]]
    by_name = runner.run([runner.prepare(item, OPTIONS) for item in reordered], OPTIONS)
    by_list = runner.run([runner.prepare(row, OPTIONS) for row in x[:10].tolist()], OPTIONS)
    assert by_name == by_list
    assert [o["label"] for o in by_name] == result.estimator.predict(x[:10]).tolist()
    assert set(by_name[0]["scores"]) == {"high", "low", "mid"}


@pytest.mark.parametrize("name", sorted(SKLEARN_ESTIMATORS))
def test_every_allowed_estimator_trains_saves_and_serves(name: str, tmp_path: Path) -> None:
    estimator_class, task = SKLEARN_ESTIMATORS[name]
    x, classes, score = _data(n=40)
    accepted = estimator_class().get_params()
    # Small enough that the whole list runs in a second or two.
    hyperparameters = {k: v for k, v in {"n_estimators": 3, "max_iter": 5}.items() if k in accepted}
    labels = classes if task == "classification" else score
    examples = read_examples(_lines(x.tolist(), labels.tolist()), "features")
    params = check_sklearn_params({"estimator": name, "hyperparameters": hyperparameters})
    result = _train(examples, params)
    save_sklearn(result.estimator, str(tmp_path / "m.skops"))
    runner = load_sklearn_runner(str(tmp_path / "m.skops"), task)
    out = runner.run([runner.prepare(row, OPTIONS) for row in x[:5].tolist()], OPTIONS)
    predicted = result.estimator.predict(x[:5]).tolist()
    if task == "regression":
        assert out == pytest.approx(predicted, abs=1e-12)
    else:
        assert [o["label"] for o in out] == predicted


def test_tiny_files_split_without_stratifying() -> None:
    # Three classes, but only 2 held out: stratifying is impossible, the split still works.
    train, validation = split_indices(["a", "a", "b", "b", "c", "c"], 0.3, 0, stratify=True)
    assert len(train) == 4 and len(validation) == 2
    assert sorted(train + validation) == list(range(6))
    with pytest.raises(TrainingError, match="too few"):
        split_indices(["a"], 0.2, 0, stratify=True)


# -- fine-tuning -----------------------------------------------------------------------------

TEXTS = (
    [f"what a great movie, number {i}" for i in range(12)]
    + [f"a terrible boring film {i}" for i in range(12)]
    + [f"it was an ordinary show {i}" for i in range(12)]
)
LABELS = ["pos"] * 12 + ["neg"] * 12 + ["meh"] * 12


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_feature_extractor(tmp_path_factory.mktemp("base")))


def _examples() -> Examples:
    return read_examples(_lines(TEXTS, LABELS), "text")


def _params(**overrides: Any) -> dict[str, Any]:
    return check_finetune_params(
        {"base_model": "tiny", "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, **overrides}
    )


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_finetuned_model_serves_text_classification(base: str, tmp_path: Path) -> None:
    progress: list[dict[str, Any]] = []
    checkpoints: list[int] = []
    result = finetune(
        _examples(),
        _params(),
        base,
        str(tmp_path / "out"),
        str(tmp_path / "ckpt"),
        on_progress=progress.append,
        on_checkpoint=checkpoints.append,
    )
    assert result.labels == ["meh", "neg", "pos"]
    assert checkpoints == [1, 2]
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch-2"]
    # 36 texts, 8 held out, 28 to train on in batches of 8: 4 steps an epoch.
    assert progress[-1] == {
        "step": 8,
        "steps_total": 8,
        "epoch": 2,
        "epochs": 2,
        "loss": result.metrics["train_loss"],
    }
    assert {(p["epoch"], p["step"]) for p in progress} >= {(1, 4), (2, 8)}
    assert all(type(p["loss"]) is float for p in progress)
    metrics = result.metrics
    assert (metrics["train_examples"], metrics["validation_examples"]) == (28, 8)
    assert metrics["evaluated_on"] == "validation"
    assert all(type(metrics[k]) is float for k in ("accuracy", "f1_macro", "train_loss"))

    runner = load_text_classifier(str(tmp_path / "out"), "cpu")
    _, validation = split_indices(LABELS, 0.2, 0, stratify=True)
    texts = [TEXTS[i] for i in validation]
    out = runner.run([runner.prepare(t, OPTIONS) for t in texts], OPTIONS)
    assert all(set(o) == {"label", "scores"} and list(o["scores"]) == result.labels for o in out)
    assert all(sum(o["scores"].values()) == pytest.approx(1.0) for o in out)
    correct = sum(o["label"] == LABELS[i] for o, i in zip(out, validation, strict=True))
    assert metrics["accuracy"] == correct / len(validation)


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_a_base_classifier_gets_a_new_head(tmp_path: Path) -> None:
    base = make_tiny_text_classifier(tmp_path / "base", labels=["x", "y"])
    result = finetune(
        _examples(),
        _params(epochs=1, validation_split=0),
        str(base),
        str(tmp_path / "out"),
        str(tmp_path / "c"),
    )
    assert result.metrics["evaluated_on"] == "training"
    assert result.metrics["train_examples"] == 36
    assert load_text_classifier(str(tmp_path / "out"), "cpu").labels == ["meh", "neg", "pos"]


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_should_stop_stops_before_the_next_step(base: str, tmp_path: Path) -> None:
    with pytest.raises(Stopped):
        finetune(
            _examples(),
            _params(),
            base,
            str(tmp_path / "out"),
            str(tmp_path / "c"),
            should_stop=lambda: True,
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_resumed_run_continues_and_ends_with_the_same_weights(base: str, tmp_path: Path) -> None:
    finetune(_examples(), _params(), base, str(tmp_path / "whole"), str(tmp_path / "c1"))

    done: list[int] = []
    with pytest.raises(Stopped):
        finetune(
            _examples(),
            _params(),
            base,
            str(tmp_path / "resumed"),
            str(tmp_path / "c2"),
            should_stop=lambda: bool(done),
            on_checkpoint=done.append,
        )
    assert done == [1] and [p.name for p in (tmp_path / "c2").iterdir()] == ["epoch-1"]

    progress: list[dict[str, Any]] = []
    checkpoints: list[int] = []
    finetune(
        _examples(),
        _params(),
        base,
        str(tmp_path / "resumed"),
        str(tmp_path / "c2"),
        on_progress=progress.append,
        on_checkpoint=checkpoints.append,
    )
    assert checkpoints == [2]
    assert progress[0]["epoch"] == 2 and progress[0]["step"] == 5
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    original = load_file(str(Path(base) / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key, tensor in whole.items():
        assert torch.allclose(tensor, resumed[key], rtol=0, atol=1e-7), key
    changed = whole["bert.embeddings.word_embeddings.weight"]
    assert not torch.equal(changed, original["embeddings.word_embeddings.weight"])


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_a_finished_checkpoint_only_saves_the_model(base: str, tmp_path: Path) -> None:
    first = finetune(_examples(), _params(epochs=1), base, str(tmp_path / "a"), str(tmp_path / "c"))
    calls: list[Any] = []
    again = finetune(
        _examples(),
        _params(epochs=1),
        base,
        str(tmp_path / "b"),
        str(tmp_path / "c"),
        should_stop=lambda: True,  # never asked: there is no step left to run
        on_progress=calls.append,
        on_checkpoint=calls.append,
    )
    assert calls == [] and again == first
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_a_checkpoint_of_another_job_is_not_resumed(base: str, tmp_path: Path) -> None:
    done: list[int] = []
    with pytest.raises(Stopped):
        finetune(
            _examples(),
            _params(seed=1),
            base,
            str(tmp_path / "out"),
            str(tmp_path / "c"),
            should_stop=lambda: bool(done),
            on_checkpoint=done.append,
        )
    checkpoints: list[int] = []
    finetune(
        _examples(),
        _params(epochs=1),
        base,
        str(tmp_path / "out"),
        str(tmp_path / "c"),
        on_checkpoint=checkpoints.append,
    )
    assert checkpoints == [1]


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_one_class_cannot_be_finetuned(base: str, tmp_path: Path) -> None:
    examples = Examples(inputs=TEXTS[:4], labels=["a"] * 4)
    with pytest.raises(TrainingError, match="only one class"):
        finetune(examples, _params(), base, str(tmp_path / "out"), str(tmp_path / "c"))


@pytest.mark.slow  # loads or trains a real model: `make test`, not test-fast
def test_minilm_sentence_transformers_layout_is_finetuned(tmp_path: Path) -> None:
    examples = read_examples(_lines(TEXTS[:4] + TEXTS[12:16], [1] * 4 + [0] * 4), "text")
    result = finetune(
        examples,
        _params(epochs=1, validation_split=0, max_length=16),
        builtin_path("minilm"),
        str(tmp_path / "out"),
        str(tmp_path / "c"),
    )
    assert result.labels == ["0", "1"]
    runner = load_text_classifier(str(tmp_path / "out"), "cpu")
    out = runner.run([runner.prepare("a great movie", OPTIONS)], OPTIONS)
    assert out[0]["label"] in {"0", "1"} and list(out[0]["scores"]) == ["0", "1"]


def _train(examples: Examples, params: dict[str, Any]) -> Any:
    """Fit as the worker does: the class the checked params name."""
    return train_sklearn(examples, params, *SKLEARN_ESTIMATORS[params["estimator"]])
