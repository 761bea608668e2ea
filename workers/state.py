"""Per-process worker state: which pool, which device, the model cache.

Set up after the fork (see signals.py), never in the parent: torch thread pools and CUDA
contexts do not survive a fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from app.config import get_settings
from workers.runtime import ModelCache, resolve_device


@dataclass
class WorkerState:
    pool: str = "cpu"
    device: str = "cpu"
    cache: ModelCache = field(default_factory=ModelCache)


_state: WorkerState | None = None


def current() -> WorkerState:
    global _state
    if _state is None:
        settings = get_settings()
        pool = os.environ.get("MODELFARM_WORKER_POOL", "cpu")
        requested = "cuda" if pool == "gpu" else "cpu"
        _state = WorkerState(
            pool=pool,
            device=resolve_device(requested, settings.device_override),
            cache=ModelCache(max_models=settings.model_cache_size),
        )
    return _state
