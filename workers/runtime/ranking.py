"""Rerank and score: `{"query", "documents", "top_n"}` in, `{"results": [{"index",
"relevance_score"}]}` out, best first (the shape TEI, Cohere and Jina answer).

Two kinds of model score a (query, document) pair:

- a cross-encoder (task `text-ranking`: a sequence classifier with one output) reads the pair
  together; its score is the sigmoid of that output, as sentence-transformers' CrossEncoder
  and TEI report it. Every pair of a chunk, across all its lines, is tokenized at once and
  cut into micro-batches by the token budget, so a line of 500 documents and 500 lines of one
  document cost the same.
- any embedding model scores by the cosine between the query's vector and each document's;
  every query and document of a chunk is embedded in the same micro-batches as the chunk's
  plain texts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from workers.runtime.base import ItemError, RunOptions
from workers.runtime.tokens import json_type

#: documents per query; Cohere's and Jina's limit for one request
MAX_DOCUMENTS = 1000
_FIELDS = {"query", "documents", "top_n"}

CheckText = Callable[[Any, RunOptions], str]


@dataclass(frozen=True)
class RankItem:
    query: str
    documents: tuple[str, ...]
    top_n: int | None


def read_rank_item(value: Any, options: RunOptions, check_text: CheckText) -> RankItem:
    """A rank item's fields checked, each text by the runner's own text check."""
    if not isinstance(value, dict):
        raise ItemError(
            "invalid_input_type",
            f"input must be an object {{query, documents, top_n}}, not {json_type(value)}",
        )
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ItemError("invalid_input", f"unknown field(s) {unknown}; use {sorted(_FIELDS)}")
    if "query" not in value:
        raise ItemError("invalid_input", "`query` is required")
    documents = value.get("documents")
    if not isinstance(documents, list) or not 1 <= len(documents) <= MAX_DOCUMENTS:
        raise ItemError(
            "invalid_input", f"`documents` must be a list of 1 to {MAX_DOCUMENTS} strings"
        )
    top_n = value.get("top_n")
    if top_n is not None and (type(top_n) is not int or top_n < 1):
        raise ItemError("invalid_input", "`top_n` must be a positive integer")
    query = _text(check_text, value["query"], options, "query")
    texts = tuple(_text(check_text, d, options, f"documents[{i}]") for i, d in enumerate(documents))
    return RankItem(query, texts, top_n)


def _text(check_text: CheckText, value: Any, options: RunOptions, name: str) -> str:
    try:
        return check_text(value, options)
    except ItemError as exc:
        raise ItemError(exc.code, f"{name}: {exc.message}") from None


def ranked(scores: list[float], top_n: int | None) -> dict[str, Any]:
    """The results of one item: best first, ties in document order, at most top_n of them."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return {"results": [{"index": i, "relevance_score": scores[i]} for i in order[:top_n]]}


def pair_scores(
    items: list[RankItem],
    options: RunOptions,
    score_pairs: Callable[[list[str], list[str], RunOptions], list[float]],
) -> list[dict[str, Any]]:
    """A cross-encoder's outputs: every (query, document) pair of `items` scored in one call,
    the token counts reported per item (a pair's tokens count for its item)."""
    queries = [item.query for item in items for _ in item.documents]
    documents = [document for item in items for document in item.documents]
    lengths: list[int] = []
    scores = score_pairs(queries, documents, replace(options, on_tokens=lengths.extend))
    outputs, start, tokens = [], 0, []
    for item in items:
        end = start + len(item.documents)
        outputs.append(ranked(scores[start:end], item.top_n))
        tokens.append(sum(lengths[start:end]))
        start = end
    if options.on_tokens is not None and len(lengths) == len(documents):
        options.on_tokens(tokens)
    return outputs


# -- embedding models: cosine ----------------------------------------------------------------


def prepare_embedding_item(value: Any, options: RunOptions, check_text: CheckText) -> Any:
    """An embedding model's item: a text, or a rank item scored by cosine."""
    if isinstance(value, dict) and ("query" in value or "documents" in value):
        return read_rank_item(value, options, check_text)
    if isinstance(value, dict):
        raise ItemError(
            "invalid_input_type",
            "input must be a string, or {query, documents, top_n} to rank, not another object",
        )
    return check_text(value, options)


def run_embedding_items(
    values: list[Any],
    options: RunOptions,
    embed: Callable[[list[str], RunOptions], list[list[float]]],
) -> list[Any]:
    """Vectors for texts and results for rank items, every text of the call embedded in the
    same micro-batches. `embed` returns L2-normalised vectors, so a dot product is a cosine."""
    if not any(isinstance(v, RankItem) for v in values):
        return embed(values, options)
    texts: list[str] = []
    spans = []
    for value in values:
        start = len(texts)
        texts += [value.query, *value.documents] if isinstance(value, RankItem) else [value]
        spans.append((start, len(texts)))
    lengths: list[int] = []
    vectors = embed(texts, replace(options, on_tokens=lengths.extend))
    outputs: list[Any] = []
    for value, (start, end) in zip(values, spans, strict=True):
        if isinstance(value, RankItem):
            matrix = np.asarray(vectors[start:end], dtype=np.float64)
            outputs.append(ranked((matrix[1:] @ matrix[0]).tolist(), value.top_n))
        else:
            outputs.append(vectors[start])
    if options.on_tokens is not None and len(lengths) == len(texts):
        options.on_tokens([sum(lengths[start:end]) for start, end in spans])
    return outputs
