"""What an image-classification training job may ask for, checked when it is submitted.

Defaults are filled in here, so the job's `params` show what it ran with. Without `base_model`
the worker trains a small ResNet from a config (workers/runtime/image_training.py); with one, it
fine-tunes that registered image model with a new head.
"""

from __future__ import annotations

from typing import Any

from app.training_params import InvalidParams, _int_in, _split

IMAGE_CLASSIFICATION = "image-classification"
_KEYS = {
    "base_model",
    "image_size",
    "epochs",
    "learning_rate",
    "batch_size",
    "validation_split",
    "augment",
    "seed",
}


def check_image_params(params: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object")
    unknown = sorted(set(params) - _KEYS)
    if unknown:
        raise InvalidParams(f"unknown params {unknown}; allowed: {', '.join(sorted(_KEYS))}")
    base_model = params.get("base_model")
    if base_model is not None and (not isinstance(base_model, str) or not base_model.strip()):
        raise InvalidParams("params.base_model must be a model name")
    # A new network starts from random weights and wants a larger step than a trained one.
    learning_rate = params.get("learning_rate", 1e-3 if base_model is None else 1e-4)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, int | float)
        or not 0 < learning_rate <= 1
    ):
        raise InvalidParams(f"learning_rate must be a number in (0, 1], not {learning_rate!r}")
    augment = params.get("augment", False)
    if not isinstance(augment, bool):
        raise InvalidParams(f"augment must be true or false, not {augment!r}")
    return {
        "task": IMAGE_CLASSIFICATION,
        "base_model": base_model,
        "image_size": _int_in(params.get("image_size", 64), "image_size", 16, 512),
        "epochs": _int_in(params.get("epochs", 10), "epochs", 1, 200),
        "learning_rate": float(learning_rate),
        "batch_size": _int_in(params.get("batch_size", 32), "batch_size", 2, 512),
        "validation_split": _split(params.get("validation_split", 0.2)),
        "augment": augment,
        "seed": _int_in(params.get("seed", 0), "seed", 0, 2**32 - 1),
    }
