"""Rerank, token classification and zero-shot runners against in-process transformers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

from tests.factories import make_tiny_cross_encoder, make_tiny_nli_model, make_tiny_token_classifier
from workers.builtins import builtin_spec
from workers.runtime import ItemError, ModelLoadError, ModelSpec, RunOptions, load_runner
from workers.runtime.items import run_chunk

QUERY = "where do cats sleep"
DOCUMENTS = [
    "Cats sleep on warm windowsills.",
    "The stock market fell sharply on Tuesday.",
    "A cat naps in the sun for hours every afternoon, curled up on a cushion.",
    "Dogs bark.",
    "Sleeping cats",
]
TEXTS = [
    "John Smith lives in New York and works for Acme in Paris.",
    "Angela Merkel met Emmanuel Macron in Berlin.",
    "no entities here, just words",
    "Zürich und München sind Städte; 東京 too.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    return {
        "text-ranking": make_tiny_cross_encoder(root / "ce", seed=3),
        "token-classification": make_tiny_token_classifier(root / "ner", seed=4),
        "zero-shot-classification": make_tiny_nli_model(root / "nli", seed=5),
    }


def _runner(models: dict[str, Path], task: str) -> Any:
    return load_runner(
        ModelSpec(key=task, framework="transformers", task=task, path=str(models[task]))
    )


def _run(runner: Any, values: list[Any], options: RunOptions) -> list[Any]:
    return runner.run([runner.prepare(v, options) for v in values], options)


def test_cross_encoder_scores_and_order_equal_cross_encoder_predict(
    models: dict[str, Path],
) -> None:
    runner = _runner(models, "text-ranking")
    reference = CrossEncoder(str(models["text-ranking"]), device="cpu")
    expected = reference.predict([(QUERY, d) for d in DOCUMENTS])  # sigmoid of the one logit
    items = [
        {"query": QUERY, "documents": DOCUMENTS},
        {"query": QUERY, "documents": DOCUMENTS, "top_n": 2},
        {"query": "stocks", "documents": DOCUMENTS[:2]},
    ]
    # A tiny budget cuts the pairs of all three items into many micro-batches.
    counted: list[int] = []
    options = RunOptions(batch_tokens=64, batch_size=3, on_tokens=counted.extend)
    full, top, other = _run(runner, items, options)
    order = [int(i) for i in np.argsort(-expected, kind="stable")]
    assert [r["index"] for r in full["results"]] == order
    for result in full["results"]:
        assert result["relevance_score"] == pytest.approx(
            float(expected[result["index"]]), abs=1e-4
        )
    assert top["results"] == full["results"][:2]
    assert len(other["results"]) == 2
    # Tokens are counted per item: the pairs' tokens, special tokens included.
    tokenizer = AutoTokenizer.from_pretrained(models["text-ranking"])
    pairs = sum(len(tokenizer(QUERY, d)["input_ids"]) for d in DOCUMENTS)
    assert counted[:2] == [pairs, pairs]


def test_embedding_model_scores_by_cosine_beside_plain_texts() -> None:
    runner = load_runner(builtin_spec("minilm"))
    reference = SentenceTransformer(str(builtin_spec("minilm").path), device="cpu")
    vectors = reference.encode([QUERY, *DOCUMENTS], normalize_embeddings=True)
    cosines = vectors[1:] @ vectors[0]
    options = RunOptions(batch_tokens=64, batch_size=4)
    text, ranked = _run(runner, ["a plain text", {"query": QUERY, "documents": DOCUMENTS}], options)
    assert len(text) == 384
    assert [r["index"] for r in ranked["results"]] == [int(i) for i in np.argsort(-cosines)]
    for result in ranked["results"]:
        assert result["relevance_score"] == pytest.approx(float(cosines[result["index"]]), abs=1e-4)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("just text", "invalid_input_type"),
        ({"query": "q"}, "invalid_input"),
        ({"query": "q", "documents": []}, "invalid_input"),
        ({"query": "q", "documents": ["d"] * 1001}, "invalid_input"),
        ({"query": "q", "documents": ["d", 3]}, "invalid_input_type"),
        ({"query": "", "documents": ["d"]}, "empty_input"),
        ({"query": "q", "documents": ["d"], "top_n": 0}, "invalid_input"),
        ({"query": "q", "documents": ["d"], "top_n": True}, "invalid_input"),
        ({"query": "q", "documents": ["d"], "extra": 1}, "invalid_input"),
    ],
)
def test_bad_rank_items_are_refused(models: dict[str, Path], value: Any, code: str) -> None:
    runner = _runner(models, "text-ranking")
    with pytest.raises(ItemError) as caught:
        runner.prepare(value, RunOptions())
    assert caught.value.code == code


def test_a_classifier_of_several_outputs_is_not_a_cross_encoder(models: dict[str, Path]) -> None:
    spec = ModelSpec(
        key="x",
        framework="transformers",
        task="text-ranking",
        path=str(models["zero-shot-classification"]),
    )
    with pytest.raises(ModelLoadError, match="1 output"):
        load_runner(spec)


def test_entities_equal_the_simple_aggregation_pipeline(models: dict[str, Path]) -> None:
    path = models["token-classification"]
    runner = _runner(models, "token-classification")
    reference = pipeline(
        "token-classification",
        model=AutoModelForTokenClassification.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        aggregation_strategy="simple",
        device="cpu",
    )
    outputs = _run(runner, TEXTS, RunOptions(batch_tokens=32, batch_size=2))
    found = 0
    for text, output in zip(TEXTS, outputs, strict=True):
        expected = reference(text)
        assert len(output["entities"]) == len(expected)
        for ours, theirs in zip(output["entities"], expected, strict=True):
            assert ours["entity"] == theirs["entity_group"]
            assert (ours["word"], ours["start"], ours["end"]) == (
                theirs["word"],
                theirs["start"],
                theirs["end"],
            )
            assert ours["score"] == pytest.approx(float(theirs["score"]), abs=1e-4)
            found += 1
    assert found >= 3, "random weights should tag some tokens with entities"


def test_zero_shot_equals_the_pipeline(models: dict[str, Path]) -> None:
    path = models["zero-shot-classification"]
    runner = _runner(models, "zero-shot-classification")
    reference = pipeline("zero-shot-classification", model=str(path), device="cpu")
    labels = ["sport", "politics", "cooking"]
    options = RunOptions(batch_tokens=64, batch_size=4, params={"labels": labels})
    values = [
        TEXTS[0],
        {"text": TEXTS[1], "labels": ["news", "recipe"], "multi_label": True},
        {"text": TEXTS[2], "labels": ["one"]},
        {"text": TEXTS[3], "hypothesis_template": "Dieser Text handelt von {}."},
    ]
    got = _run(runner, values, options)
    calls: list[tuple[str, list[str], dict[str, Any]]] = [
        (TEXTS[0], labels, {}),
        (TEXTS[1], ["news", "recipe"], {"multi_label": True}),
        (TEXTS[2], ["one"], {}),
        (TEXTS[3], labels, {"hypothesis_template": "Dieser Text handelt von {}."}),
    ]
    for ours, (text, candidates, kwargs) in zip(got, calls, strict=True):
        theirs = reference(text, candidate_labels=candidates, **kwargs)
        assert ours["labels"] == theirs["labels"]
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-4)
    assert sum(got[0]["scores"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("value", "params", "code"),
    [
        ("text", {}, "missing_labels"),
        ("text", {"labels": []}, "invalid_labels"),
        ("text", {"labels": ["a", "a"]}, "invalid_labels"),
        ("text", {"labels": ["a", 1]}, "invalid_labels"),
        (
            {"text": "t", "labels": ["a"], "hypothesis_template": "{0.__class__}"},
            {},
            "invalid_input",
        ),
        ({"text": "t", "labels": ["a"], "multi_label": "yes"}, {}, "invalid_input"),
        ({"labels": ["a"]}, {}, "invalid_input"),
    ],
)
def test_bad_zero_shot_items_are_refused(
    models: dict[str, Path], value: Any, params: dict[str, Any], code: str
) -> None:
    runner = _runner(models, "zero-shot-classification")
    with pytest.raises(ItemError) as caught:
        runner.prepare(value, RunOptions(params=params))
    assert caught.value.code == code


def test_a_model_without_an_entailment_label_is_not_an_nli_model(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    from tests.factories import make_tiny_text_classifier

    path = make_tiny_text_classifier(tmp_path / "clf", ["neg", "pos"])
    spec = ModelSpec(
        key="x", framework="transformers", task="zero-shot-classification", path=str(path)
    )
    with pytest.raises(ModelLoadError, match="entailment"):
        load_runner(spec)


def test_lines_of_every_task_run_through_run_chunk(models: dict[str, Path]) -> None:
    """A bad line among good ones is one error line, whatever the task."""
    runner = _runner(models, "text-ranking")
    lines = [
        (1, b'{"custom_id": "a", "input": {"query": "q", "documents": ["x", "y"], "top_n": 1}}'),
        (2, b'{"custom_id": "b", "input": "not a rank item"}'),
    ]
    result = run_chunk(runner, lines, replace(RunOptions(), batch_size=2))
    assert len(result.outputs) == 1 and len(result.errors) == 1
    assert b'"relevance_score"' in result.outputs[0]
    assert b'"invalid_input_type"' in result.errors[0]
    assert result.tokens > 0
