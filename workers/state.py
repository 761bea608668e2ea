"""Per-process worker state: which pool, which device and backend, the model cache, and the
model specs this worker builds (so a preloaded model and a job's model are one cache entry).

Set up after the fork (see signals.py), never in the parent: torch thread pools and CUDA
contexts do not survive a fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from app.config import get_settings
from app.storage import get_store
from workers.runtime import BUILTIN_MODELS, ModelCache, ModelSpec, builtin_spec, resolve_device
from workers.runtime.onnx import GRAPH_NAME, resolve_backend


@dataclass
class WorkerState:
    pool: str = "cpu"
    device: str = "cpu"
    backend: str = "torch"  #: for text models: "onnx" or "torch" (INFERENCE_BACKEND)
    cache: ModelCache = field(default_factory=ModelCache)

    def builtin(self, name: str) -> ModelSpec:
        model = BUILTIN_MODELS[name]
        graph = _graph_dir(get_store().uri("builtin", f"{name}@{model.version}"))
        return builtin_spec(name, device=self.device, backend=self.backend, graph_dir=graph)

    def version(self, key: str, framework: str, task: str, uri: str) -> ModelSpec:
        """A tenant's model version stored at `uri` (a .skops file or a model folder)."""
        store = get_store()
        text = framework != "sklearn"
        return ModelSpec(
            key=key,
            framework=framework,
            task=task,
            path=str(store.local_path(uri)),
            device=self.device,
            backend=self.backend if text else "torch",
            graph_dir=_graph_dir(uri) if text else None,
        )


def _graph_dir(base_uri: str) -> str | None:
    """The local folder of a model's ONNX graph, beside the model in the artifact store.

    A sibling of the version's folder (`<version>-onnx/`), never inside it: the version's
    folder holds what the tenant's archive unpacked, and a graph planted there must not be
    loaded unchecked. With a local store every worker on the machine shares it; a remote store
    (s3://) gets one folder per worker's cache for now, so each worker exports once
    (publishing graphs to the store is step 11's).
    """
    store = get_store()
    uri = f"{base_uri.rstrip('/')}-onnx/{GRAPH_NAME}"
    if uri.startswith("file:"):
        return str(store.local_path(uri))
    return str(store.cache_dir / "graphs" / GRAPH_NAME / uri.replace("/", "_").replace(":", ""))


_state: WorkerState | None = None


def current() -> WorkerState:
    global _state
    if _state is None:
        settings = get_settings()
        pool = os.environ.get("MODELFARM_WORKER_POOL", "cpu")
        requested = "cuda" if pool == "gpu" else "cpu"
        device = resolve_device(requested, settings.device_override)
        _state = WorkerState(
            pool=pool,
            device=device,
            backend=resolve_backend(settings.inference_backend, device),
            cache=ModelCache(max_models=settings.model_cache_size),
        )
    return _state
