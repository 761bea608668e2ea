"""Specs of the builtin models: what they are (app/catalogue.py) with where their weights lie
(the runtime's loading side)."""

from __future__ import annotations

from app.catalogue import BUILTIN_MODELS
from workers.runtime import ModelSpec, builtin_path


def builtin_spec(
    name: str,
    device: str = "cpu",
    backend: str = "torch",
    graph_dir: str | None = None,
    precision: str = "fp32",
    converted_dir: str | None = None,
) -> ModelSpec:
    """The spec of a builtin model; KeyError if there is no such builtin."""
    model = BUILTIN_MODELS[name]
    return ModelSpec(
        key=model.ref(name),
        framework=model.framework,
        task=model.task,
        path=builtin_path(name),
        device=device,
        backend=backend,
        graph_dir=graph_dir,
        precision=precision,
        converted_dir=converted_dir,
    )
