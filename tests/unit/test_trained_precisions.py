"""A trained version's precisions, measured by its training job before it registers it."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_trained_model_that_cannot_be_measured_still_serves_at_fp32(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.tasks.training import measured_precisions

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')  # no weights: not loadable
    got = measured_precisions("job-1", "text-classification", folder, tmp_path)
    assert got == {"precisions": {"fp32": {"offered": True}}, "default_precision": "fp32"}
    assert "precisions were not measured" in caplog.text
    assert not (tmp_path / "precision").exists()  # its scratch folder is gone
