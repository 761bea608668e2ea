"""Token classification (`token-classification`): named entities of a text, as transformers'
token-classification pipeline groups them with `aggregation_strategy="simple"`.

Each token takes its best label; neighbouring tokens join one entity while the tag stays the
same and the next token does not begin a new one (`B-`); the entity's score is the mean of its
tokens', its word their tokens joined back, `start`/`end` character offsets into the input.
Entities tagged `O` are left out. A text longer than the model reads is truncated, so entities
past its length are not found.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.runtime.base import ModelLoadError, RunOptions
from workers.runtime.text import _TextRunner


class TokenClassificationRunner(_TextRunner):
    """{"entities": [{"entity", "score", "word", "start", "end"}]} per text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.tokenizer.is_fast:
            raise ModelLoadError("token classification needs a fast tokenizer (tokenizer.json)")
        config: Any = self.model.config
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]

    def run(self, values: list[str], options: RunOptions) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in values]
        if not values:
            return results
        encoded = self.tokenizer(
            values,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        columns = {k: encoded[k] for k in encoded.keys()}
        with self._computing():
            for indices, arrays in self.batches(columns, options):
                logits = self.model(**self._tensors(arrays)).logits.float().cpu().numpy()
                for row, index in enumerate(indices):
                    count = len(encoded["input_ids"][index])
                    tokens = self._tokens(values[index], logits[row, :count], encoded, index)
                    results[index] = {"entities": self._group(tokens)}
        return results

    def _tokens(
        self, text: str, logits: np.ndarray, encoded: Any, index: int
    ) -> list[tuple[str, float, str, int, int]]:
        """(label, score, token, start, end) of every token that is not a special one."""
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
        ids = encoded["input_ids"][index]
        special = encoded["special_tokens_mask"][index]
        offsets = encoded["offset_mapping"][index]
        tokens = []
        for position, token_id in enumerate(ids):
            if special[position]:
                continue
            best = int(probabilities[position].argmax())
            start, end = (int(x) for x in offsets[position])
            # An unknown token shows the text it stands for, not "[UNK]".
            word = (
                text[start:end]
                if token_id == self.tokenizer.unk_token_id
                else self.tokenizer.convert_ids_to_tokens(int(token_id))
            )
            tokens.append(
                (self.labels[best], float(probabilities[position, best]), word, start, end)
            )
        return tokens

    def _group(self, tokens: list[tuple[str, float, str, int, int]]) -> list[dict[str, Any]]:
        groups: list[list[tuple[str, float, str, int, int]]] = []
        for token in tokens:
            if groups:
                begins, tag = _tag(token[0])
                if tag == _tag(groups[-1][-1][0])[1] and not begins:
                    groups[-1].append(token)
                    continue
            groups.append([token])
        entities = []
        for group in groups:
            name = group[0][0].split("-", 1)[-1]
            if name == "O":
                continue
            entities.append(
                {
                    "entity": name,
                    "score": float(np.mean([t[1] for t in group])),
                    "word": self.tokenizer.convert_tokens_to_string([t[2] for t in group]),
                    "start": group[0][3],
                    "end": group[-1][4],
                }
            )
        return entities


def _tag(label: str) -> tuple[bool, str]:
    """(whether the label begins an entity, its tag): `B-PER` begins PER, `I-PER` continues
    it, and a label without either prefix (`O`, `PER`) continues like `I-`."""
    if label.startswith(("B-", "I-")):
        return label[0] == "B", label[2:]
    return False, label
