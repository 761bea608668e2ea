"""Errors in words a person can act on: where a line's JSON broke (line and column)."""

from __future__ import annotations

import pytest

from workers.runtime.items import json_error_words, parse_line
from workers.runtime.training import TrainingError, read_examples


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b'{"input": "x"', "line 7, column 14: not valid JSON (unexpected end of data)"),
        (b'{"input": 1,}', "line 7, column 12: not valid JSON (trailing comma is not allowed)"),
        (b"\xff", "line 7, column 1: not valid UTF-8 text"),
    ],
)
def test_a_broken_line_names_its_line_and_column(raw: bytes, said: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_line(raw)
    words = json_error_words(7, caught.value)
    assert words.startswith(said), words
    assert "char" not in words  # the decoder's offset within the line is not repeated


def test_a_training_line_names_its_line_and_column() -> None:
    lines = [b'{"input": "a", "label": "x"}\n', b'{"input": "b" "label": "y"}\n']
    with pytest.raises(TrainingError) as caught:
        read_examples(lines, "text")
    assert caught.value.message.startswith("line 2, column 15: not valid JSON"), caught.value
