from __future__ import annotations

import pytest

from app.image_training_params import check_image_params
from app.training_params import InvalidParams


def test_defaults_are_filled_in_and_bounds_hold() -> None:
    params = check_image_params({})
    assert params == {
        "task": "image-classification",
        "base_model": None,
        "image_size": 64,
        "epochs": 10,
        "learning_rate": 1e-3,
        "batch_size": 32,
        "validation_split": 0.2,
        "augment": False,
        "seed": 0,
    }
    assert check_image_params({"base_model": "vit"})["learning_rate"] == 1e-4
    for bad in (
        {"image_size": 4},
        {"epochs": 0},
        {"augment": "yes"},
        {"estimator": "x"},
        {"learning_rate": 2},
        {"validation_split": 0.9},
        {"base_model": ""},
    ):
        with pytest.raises(InvalidParams):
            check_image_params(bad)
