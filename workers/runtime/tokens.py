"""Text inputs as padded token batches, shared by every text backend (torch, ONNX Runtime).

Speed comes from tokenizing a whole chunk once (no padding) to learn every item's length, then
cutting length-sorted micro-batches by a token budget, so almost no compute goes to padding.
Padding is done here with numpy rather than with `tokenizer.pad`, which measured ~6x slower.
No torch here: the ONNX backend runs without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from workers.runtime.base import ItemError, RunOptions, Stopped
from workers.runtime.batching import token_budget_batches

#: The model inputs a text runner feeds, with the value that pads each.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class TextInputs:
    """Input checks for text items and the sort / budget / pad loop."""

    def __init__(self, tokenizer: Any, max_length: int, lowercase: bool = False) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase
        self._pad_values = {
            "input_ids": tokenizer.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
        }

    def prepare(self, value: Any, options: RunOptions) -> str:
        if not isinstance(value, str):
            raise ItemError("invalid_input_type", f"input must be a string, not {json_type(value)}")
        if not value.strip():
            # A blank text embeds to the [CLS]/[SEP] vector: valid numbers, meaningless result.
            raise ItemError("empty_input", "input is an empty string")
        if len(value) > options.max_chars:
            raise ItemError(
                "input_too_long",
                f"input has {len(value)} characters; the limit is {options.max_chars}",
            )
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise ItemError(
                    "invalid_input", "input holds a lone surrogate (not valid Unicode)"
                ) from None
        return value.lower() if self.lowercase else value

    def padded_batches(
        self, texts: list[str], options: RunOptions, pairs: list[str] | None = None
    ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """Yield (input indices, int64 arrays by input name) per micro-batch, longest first.

        `pairs` makes each input a (text, pair) couple, as a cross-encoder reads a query and a
        document. Asks `options.should_stop` before each micro-batch and raises Stopped when
        it says so.
        """
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        columns = {k: encoded[k] for k in encoded.keys() if k in self._pad_values}
        yield from self.batches(columns, options)

    def batches(
        self, columns: dict[str, list[list[int]]], options: RunOptions
    ) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """padded_batches of inputs already tokenized (`columns` by input name, unpadded)."""
        lengths = [len(ids) for ids in columns["input_ids"]]
        if options.on_tokens is not None:
            options.on_tokens(lengths)
        for indices in token_budget_batches(lengths, options.batch_tokens, options.batch_size):
            if options.should_stop is not None and options.should_stop():
                raise Stopped()
            width = lengths[indices[0]]  # batches come longest first
            arrays: dict[str, np.ndarray] = {}
            for key, rows in columns.items():
                if key not in self._pad_values:
                    continue
                array = np.full((len(indices), width), self._pad_values[key], dtype=np.int64)
                for row, index in enumerate(indices):
                    array[row, : lengths[index]] = rows[index]
                arrays[key] = array
            if "attention_mask" not in arrays:
                lens = np.array([lengths[i] for i in indices])
                arrays["attention_mask"] = (np.arange(width)[None, :] < lens[:, None]).astype(
                    np.int64
                )
            yield indices, arrays


def scores(labels: list[str], probabilities: list[float]) -> dict[str, Any]:
    """A classifier's output for one item: the best label and every label's probability."""
    best = max(range(len(labels)), key=probabilities.__getitem__)
    return {"label": labels[best], "scores": dict(zip(labels, probabilities, strict=True))}


def json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
