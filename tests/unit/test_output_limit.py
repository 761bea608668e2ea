"""An output line over MAX_OUTPUT_LINE_BYTES is that item's error line (issue 25, part 3)."""

from __future__ import annotations

import numpy as np

from workers.runtime.base import RunOptions
from workers.runtime.items import run_chunk
from workers.runtime.sklearn import SklearnRunner

LINES = [(1, b'{"custom_id": "a", "input": [0, 0]}'), (2, b'{"custom_id": "b", "input": [1, 1]}')]


def test_an_output_line_over_the_limit_is_an_error_line() -> None:
    """The probe's output amplifier, within the width limits: every line is still bounded."""
    from sklearn.dummy import DummyRegressor

    estimator = DummyRegressor().fit(np.zeros((4, 2)), np.ones((4, 5000)))  # 5,000 outputs
    runner = SklearnRunner(estimator, "regression")
    result = run_chunk(runner, LINES, RunOptions(max_output_bytes=16 * 1024))
    assert result.outputs == []
    assert [b'"output_too_large"' in line for line in result.errors] == [True, True]
    wide_enough = run_chunk(runner, LINES, RunOptions(max_output_bytes=64 * 1024))
    assert len(wide_enough.outputs) == 2 and not wide_enough.errors
