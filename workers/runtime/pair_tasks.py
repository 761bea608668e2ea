"""Tasks that read a text with a second text: rerank by a cross-encoder (`text-ranking`) and
zero-shot classification (`zero-shot-classification`, an NLI model reading the text with one
hypothesis per candidate label).

Both are sequence classifiers on torch; every pair of a call, across all its items, is
tokenized once and cut into micro-batches by the token budget (workers/runtime/tokens.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from workers.runtime import ranking
from workers.runtime.base import ItemError, ModelLoadError, Runner, RunOptions
from workers.runtime.text import _default_max_length, _load_model, _load_tokenizer, _TextRunner
from workers.runtime.tokens import json_type


class CrossEncoderRunner(_TextRunner):
    """Task `text-ranking`: a rank item's documents scored against its query, best first."""

    def prepare(self, value: Any, options: RunOptions) -> Any:
        return ranking.read_rank_item(value, options, super().prepare)

    def run(self, values: list[ranking.RankItem], options: RunOptions) -> list[dict[str, Any]]:
        return ranking.pair_scores(values, options, self.score_pairs)

    def score_pairs(
        self, queries: list[str], documents: list[str], options: RunOptions
    ) -> list[float]:
        """sigmoid(the one logit) of each (query, document), as CrossEncoder.predict says."""
        scores = [0.0] * len(queries)
        if not queries:
            return scores
        with self._computing():
            for indices, arrays in self.padded_batches(queries, options, documents):
                logits = self.model(**self._tensors(arrays)).logits.float()[:, 0]
                for index, score in zip(indices, torch.sigmoid(logits).cpu().tolist(), strict=True):
                    scores[index] = score
        return scores


# -- zero-shot ---------------------------------------------------------------------------------

DEFAULT_TEMPLATE = "This example is {}."
MAX_LABELS = 100
MAX_LABEL_CHARS = 200
_ZERO_SHOT_FIELDS = {"text", "labels", "multi_label", "hypothesis_template"}


@dataclass(frozen=True)
class ZeroShotItem:
    text: str
    labels: tuple[str, ...]
    multi_label: bool
    template: str

    def hypotheses(self) -> list[str]:
        # str.replace, never str.format: a template is the tenant's, and format fields reach
        # into attributes ("{0.__class__}").
        return [self.template.replace("{}", label) for label in self.labels]


class ZeroShotRunner(_TextRunner):
    """Task `zero-shot-classification`: {"labels": [...], "scores": [...]}, best first, as
    transformers' zero-shot pipeline answers (without echoing the text)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config: Any = self.model.config
        label2id = config.label2id or {}
        entail = [i for name, i in label2id.items() if str(name).lower().startswith("entail")]
        if not entail or config.num_labels < 2:
            raise ModelLoadError(
                "zero-shot classification needs an NLI model: a classifier whose label2id "
                "names an `entailment` label among at least 2"
            )
        self.entailment = int(entail[0])
        # The pipeline's choice: the contradiction logit is the first, or the last when the
        # first is entailment.
        self.contradiction = -1 if self.entailment == 0 else 0

    def prepare(self, value: Any, options: RunOptions) -> Any:
        params = options.params
        fields: dict[str, Any] = {}
        if isinstance(value, dict):
            unknown = sorted(set(value) - _ZERO_SHOT_FIELDS)
            if unknown:
                raise ItemError("invalid_input", f"unknown field(s) {unknown}")
            if "text" not in value:
                raise ItemError("invalid_input", "`text` is required")
            fields, value = value, value["text"]
        text = super().prepare(value, options)
        labels = fields.get("labels", params.get("labels"))
        multi_label = fields.get("multi_label", params.get("multi_label", False))
        template = fields.get("hypothesis_template", params.get("hypothesis_template"))
        template = DEFAULT_TEMPLATE if template is None else template
        return ZeroShotItem(text, _labels(labels), _flag(multi_label), _template(template))

    def run(self, values: list[ZeroShotItem], options: RunOptions) -> list[dict[str, Any]]:
        premises = [item.text for item in values for _ in item.labels]
        hypotheses = [h for item in values for h in item.hypotheses()]
        logits = self._logits(premises, hypotheses, options)
        outputs, start = [], 0
        for item in values:
            end = start + len(item.labels)
            outputs.append(self._answer(item, logits[start:end]))
            start = end
        return outputs

    def _logits(
        self, premises: list[str], hypotheses: list[str], options: RunOptions
    ) -> np.ndarray:
        labels: Any = self.model.config.num_labels
        rows = np.zeros((len(premises), int(labels)), dtype=np.float32)
        if not premises:
            return rows
        # The pipeline truncates the text, never the hypothesis ("only_first").
        encoded = self.tokenizer(
            premises, hypotheses, truncation="only_first", max_length=self.max_length
        )
        columns = {k: encoded[k] for k in encoded.keys()}
        with self._computing():
            for indices, arrays in self.batches(columns, options):
                batch = self.model(**self._tensors(arrays)).logits.float().cpu().numpy()
                rows[indices] = batch
        return rows

    def _answer(self, item: ZeroShotItem, logits: np.ndarray) -> dict[str, Any]:
        if item.multi_label or len(item.labels) == 1:
            # Each label on its own: entailment against contradiction.
            pair = logits[:, [self.contradiction, self.entailment]].astype(np.float64)
            scores = _softmax(pair)[:, 1]
        else:
            scores = _softmax(logits[:, self.entailment].astype(np.float64))
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return {
            "labels": [item.labels[i] for i in order],
            "scores": [float(scores[i]) for i in order],
        }


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def _labels(labels: Any) -> tuple[str, ...]:
    if labels is None:
        raise ItemError(
            "missing_labels", "give the candidate labels: params.labels or input.labels"
        )
    if (
        not isinstance(labels, list)
        or not 1 <= len(labels) <= MAX_LABELS
        or not all(isinstance(x, str) and x.strip() and len(x) <= MAX_LABEL_CHARS for x in labels)
    ):
        raise ItemError(
            "invalid_labels",
            f"labels must be a list of 1 to {MAX_LABELS} non-empty strings of at most "
            f"{MAX_LABEL_CHARS} characters, not {json_type(labels)}",
        )
    if len(set(labels)) != len(labels):
        raise ItemError("invalid_labels", "labels must not repeat")
    return tuple(labels)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ItemError("invalid_input", "multi_label must be true or false")
    return value


def _template(template: Any) -> str:
    if not isinstance(template, str) or template.count("{}") != 1 or len(template) > 500:
        raise ItemError(
            "invalid_input", "hypothesis_template must be a string holding `{}` once (<= 500 chars)"
        )
    return template


def load(kind: str, path: str, device: str, precision: str = "fp32") -> Runner:
    """A runner of a pair task, or of token classification (workers/runtime/entities.py)."""
    root = Path(path)
    tokenizer = _load_tokenizer(root)
    if kind == "token-classification":
        from transformers import AutoModelForTokenClassification

        from workers.runtime.entities import TokenClassificationRunner

        model = _load_model(AutoModelForTokenClassification, root, device)
        cls: type[TokenClassificationRunner | CrossEncoderRunner | ZeroShotRunner]
        cls = TokenClassificationRunner
    else:
        model = _load_model(AutoModelForSequenceClassification, root, device)
        cls = CrossEncoderRunner if kind == "text-ranking" else ZeroShotRunner
        outputs = int(getattr(model.config, "num_labels", 0) or 0)
        if kind == "text-ranking" and outputs != 1:
            raise ModelLoadError(
                f"text-ranking needs a cross-encoder: a classifier with 1 output, not {outputs}"
            )
    max_length = _default_max_length(tokenizer, model)
    return cls(model, tokenizer, max_length, device, precision=precision)
