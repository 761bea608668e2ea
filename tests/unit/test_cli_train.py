from __future__ import annotations

import pytest

from app.cli.errors import CliError
from app.cli.train import _params


def test_train_params_are_json_when_they_can_be() -> None:
    assert _params(["epochs=3", "learning_rate=0.01", "augment=true", "base_model=vit"]) == {
        "epochs": 3,
        "learning_rate": 0.01,
        "augment": True,
        "base_model": "vit",
    }
    with pytest.raises(CliError, match="key=value"):
        _params(["epochs"])
