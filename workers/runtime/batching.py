"""Token-budget micro-batching.

A fixed item count wastes work twice: short texts batched with a long one are padded to its
length, and a batch of long texts can be far larger than a batch of short ones. Sorting by
length and capping padded tokens per batch keeps every forward pass about the same size.
"""

from __future__ import annotations


def token_budget_batches(lengths: list[int], batch_tokens: int, batch_size: int) -> list[list[int]]:
    """Group item indices so that max(length) x items <= batch_tokens and items <= batch_size.

    Items are visited longest first, so the largest batch (the one most likely to run out of
    memory) comes first and fails fast; ties keep input order. An item longer than the whole
    budget still runs, alone in its batch. Every index appears exactly once.
    """
    if batch_tokens < 1 or batch_size < 1:
        raise ValueError("batch_tokens and batch_size must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    padded_length = 0  # the first (longest) item of the current batch sets its padded length
    for index in order:
        length = max(lengths[index], 1)
        if current and (
            len(current) >= batch_size or (len(current) + 1) * padded_length > batch_tokens
        ):
            batches.append(current)
            current = []
        if not current:
            padded_length = length
        current.append(index)
    if current:
        batches.append(current)
    return batches
