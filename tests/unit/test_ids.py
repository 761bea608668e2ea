"""Ids are monotonic within a process: made in one millisecond, they still sort as made."""

from __future__ import annotations

import pytest

from app import ids


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ids, "_last", (0, 0))  # put back after the test, as the clock is
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_765_000_000_000 * 1_000_000)
    made = [ids.new_id("job") for _ in range(2_000)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made


def test_a_clock_that_steps_back_does_not_reorder_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_last", (0, 0))
    clock = iter([2_000_000_000_000, 1_999_999_999_000, 1_999_999_000_000, 2_000_000_000_001])
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock) * 1_000_000)
    made = [ids.new_id("job") for _ in range(4)]
    assert sorted(made) == made
    assert made[-1][4:14] == ids._encode(2_000_000_000_001, 10)  # a new millisecond: its own


def test_a_spent_random_part_carries_into_the_next_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ids.time, "time_ns", lambda: 5 * 1_000_000)
    monkeypatch.setattr(ids, "_last", (5, (1 << 80) - 1))
    after = ids.new_id("job")
    assert after == "job_" + ids._encode(6, 10) + ids._encode(0, 16)
    assert ids.new_id("job") > after
