"""Model loading and execution for the workers; no Celery here, so it runs in plain tests."""

from __future__ import annotations

from typing import Any

from workers.runtime.base import (
    ItemError,
    ModelLoadError,
    ModelSpec,
    Runner,
    RunOptions,
    Stopped,
)
from workers.runtime.batching import token_budget_batches
from workers.runtime.registry import (
    ModelCache,
    builtin_path,
    configure_threads,
    load_runner,
    resolve_device,
)


def check_skops_file(path: str) -> dict[str, Any]:
    """Validate an uploaded skops file; see workers.runtime.sklearn.

    Imported on call: skops pulls in scikit-learn, scipy and torch, seconds a process that
    never validates need not spend.
    """
    from workers.runtime.sklearn import check_skops_file as check

    return check(path)


__all__ = [
    "ItemError",
    "ModelCache",
    "ModelLoadError",
    "ModelSpec",
    "RunOptions",
    "Runner",
    "Stopped",
    "builtin_path",
    "check_skops_file",
    "configure_threads",
    "load_runner",
    "resolve_device",
    "token_budget_batches",
]
