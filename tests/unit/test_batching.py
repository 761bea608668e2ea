from __future__ import annotations

import random

import pytest

from workers.runtime.batching import token_budget_batches


def _check_invariants(lengths: list[int], batches: list[list[int]], tokens: int, size: int) -> None:
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths))), "every index exactly once"
    for batch in batches:
        assert 1 <= len(batch) <= size
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= tokens or len(batch) == 1, (batch, padded)


def test_random_lengths_respect_budget_and_item_cap() -> None:
    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 400))]
        tokens, size = rng.choice([64, 512, 4096]), rng.choice([1, 3, 32, 128])
        _check_invariants(lengths, token_budget_batches(lengths, tokens, size), tokens, size)


def test_sorted_longest_first_and_ties_keep_input_order() -> None:
    lengths = [5, 9, 5, 1, 9, 7]
    batches = token_budget_batches(lengths, batch_tokens=1000, batch_size=2)
    assert batches == [[1, 4], [5, 0], [2, 3]]


def test_budget_cuts_batches() -> None:
    # 10 x 10 tokens in a 30-token budget: 3 per batch, then the remainder.
    batches = token_budget_batches([10] * 10, batch_tokens=30, batch_size=100)
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_short_items_share_a_batch_long_items_do_not() -> None:
    lengths = [100, 4, 100, 4, 4, 4]
    batches = token_budget_batches(lengths, batch_tokens=200, batch_size=100)
    assert batches == [[0, 2], [1, 3, 4, 5]]


def test_item_longer_than_budget_runs_alone() -> None:
    batches = token_budget_batches([500, 2, 2], batch_tokens=100, batch_size=10)
    assert batches == [[0], [1, 2]]


def test_empty_input_and_zero_lengths() -> None:
    assert token_budget_batches([], 100, 10) == []
    assert token_budget_batches([0, 0], 100, 10) == [[0, 1]]


@pytest.mark.parametrize(("tokens", "size"), [(0, 1), (1, 0), (-5, 10)])
def test_rejects_non_positive_limits(tokens: int, size: int) -> None:
    with pytest.raises(ValueError):
        token_budget_batches([1, 2], tokens, size)
