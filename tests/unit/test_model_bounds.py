"""The size checks every uploaded model goes through, called as plain functions (issue 25)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from workers.runtime.base import ModelLoadError
from workers.runtime.bounds import ModelLimits, ModelTooLarge, check_config
from workers.runtime.sklearn_bounds import WidthLimits, check_widths
from workers.runtime.validation import memory_limit

LIMITS = ModelLimits(max_parameters=50_000_000, max_bytes=200 * 1024**2)
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 1000}


def test_a_generation_config_is_measured_on_the_meta_device() -> None:
    size = check_config(GPT2, "text-generation", None, LIMITS)
    # Token and position embeddings (tied to the head, so counted once) and two blocks.
    expected = 1000 * 32 + 1024 * 32 + 2 * (12 * 32 * 32 + 13 * 32) + 2 * 32
    assert size.parameters == expected and size.bytes == 4 * expected


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"n_layer": 50_000}, "n_layer"),
        ({"n_embd": 4096, "n_head": 32, "vocab_size": 200_000}, "parameters"),
    ],
)
def test_a_hostile_generation_config_is_refused_unbuilt(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(ModelTooLarge, match=says):
        check_config({**GPT2, **changes}, "text-generation", None, LIMITS)


def test_shipped_weights_must_cover_the_model_with_its_shapes() -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in GPT2.items() if k != "model_type"}))
    shipped = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    shipped.pop("lm_head.weight")  # tied to the token embeddings: saved once
    check_config(GPT2, "text-generation", shipped, LIMITS)
    with pytest.raises(ModelLoadError, match="lack 1"):
        check_config(GPT2, "text-generation", _without(shipped, "transformer.wte.weight"), LIMITS)
    bad = {**shipped, "transformer.h.0.mlp.c_fc.weight": (32, 64)}
    with pytest.raises(ModelLoadError, match="do not match"):
        check_config(GPT2, "text-generation", bad, LIMITS)


def test_an_unknown_model_type_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="not a usable config"):
        check_config({"model_type": "no-such-thing"}, "feature-extraction", None, LIMITS)


def test_skops_widths_agree_with_the_arrays() -> None:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression

    limits = WidthLimits(max_features=100, max_outputs=10, max_estimators=5)
    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    model = LogisticRegression().fit(x, y)
    check_widths(model, limits)
    model.n_features_in_ = 4
    with pytest.raises(ModelLoadError, match="coef_"):
        check_widths(model, limits)
    forest = RandomForestRegressor(n_estimators=3).fit(x, y.astype(float))
    check_widths(forest, limits)
    forest.estimators_[1].n_features_in_ = 7
    with pytest.raises(ModelLoadError, match="tree_"):
        check_widths(forest, limits)
    with pytest.raises(ModelLoadError, match="estimators_"):
        check_widths(RandomForestRegressor(n_estimators=6).fit(x, y), limits)


def test_memory_limit_turns_an_allocation_past_it_into_memory_error() -> None:
    with memory_limit(256 * 1024**2), pytest.raises(MemoryError):
        np.ones(2 * 1024**3 // 8)
    np.ones(64 * 1024**2 // 8)  # the limit is put back afterwards


def _without(shapes: dict[str, tuple[int, ...]], name: str) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in shapes.items() if k != name}
