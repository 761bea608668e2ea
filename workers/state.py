"""The state of one pool process (a child the worker forks): which pool, which device and
backend, the model cache, and the model specs this process builds (so a preloaded model and a
job's model are one cache entry).

Set up after the fork (see signals.py), never in the parent: torch thread pools and CUDA
contexts do not survive a fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from app.catalogue import BUILTIN_MODELS
from app.config import get_settings
from app.storage import get_store
from workers.builtins import builtin_spec
from workers.runtime import ModelCache, ModelSpec, resolve_device
from workers.runtime.onnx import GRAPH_NAME, resolve_backend


@dataclass
class ProcessState:
    pool: str = "cpu"
    device: str = "cpu"
    backend: str = "torch"  #: for text models: "onnx" or "torch" (INFERENCE_BACKEND)
    cache: ModelCache = field(default_factory=ModelCache)
    precision: str = "fp32"  #: text models on torch (ModelSpec.precision)
    batch_tokens: int = 1024  #: micro-batch budget unless a job's params set one
    batch_size: int = 64

    def builtin(self, name: str) -> ModelSpec:
        model = BUILTIN_MODELS[name]
        base = get_store().uri("builtin", model.ref(name))
        if model.task == "text-generation":  # torch only; its GGUF converted once per version
            return builtin_spec(
                name,
                device=self.device,
                precision=self.precision,
                converted_dir=_converted_dir(base),
            )
        graph = _graph_dir(base)
        return builtin_spec(
            name,
            device=self.device,
            backend=self.backend,
            graph_dir=graph,
            precision=self.precision,
        )

    def version(self, key: str, framework: str, task: str, uri: str) -> ModelSpec:
        """A tenant's model version stored at `uri` (a .skops file or a model folder)."""
        store = get_store()
        text = framework != "sklearn" and task not in ("text-generation", "text2text-generation")
        return ModelSpec(
            key=key,
            framework=framework,
            task=task,
            path=str(store.local_path(uri)),
            device=self.device,
            backend=self.backend if text else "torch",
            graph_dir=_graph_dir(uri) if text else None,
            precision=self.precision if framework != "sklearn" else "fp32",
        )


def _graph_dir(base_uri: str) -> str | None:
    """The local folder of a model's ONNX graph, beside the model in the artifact store.

    A sibling of the version's folder (`<version>-onnx/`), never inside it: the version's
    folder holds what the tenant's archive unpacked, and a graph planted there must not be
    loaded unchecked. With a local store every worker on the machine shares it. With a remote
    store (s3://) each machine exports into its own DATA_DIR/cache and never publishes the
    graph: an export takes seconds and is checked against torch where it is made, while a graph
    read back from a shared bucket would be trusted unchecked (decision 0002).
    """
    store = get_store()
    uri = f"{base_uri.rstrip('/')}-onnx/{GRAPH_NAME}"
    if uri.startswith("file:"):
        return str(store.local_path(uri))
    return str(store.cache_dir / "graphs" / GRAPH_NAME / uri.replace("/", "_").replace(":", ""))


def _converted_dir(base_uri: str) -> str:
    """The local folder of a builtin GGUF model's transformers copy.

    With a local store it lies in the artifact store beside the builtin's other files
    (`builtin/<name>@<version>-transformers/`), converted by the first worker that needs it
    and loaded by every other in about a second. With a remote store (s3://) each machine
    converts into its own DATA_DIR/cache, for the reason decision 0002 gives for ONNX graphs:
    weights read back from a shared bucket would be trusted unchecked, while the GGUF they come
    from ships inside a Python package on every machine (docs/decisions/0011).
    """
    store = get_store()
    uri = f"{base_uri.rstrip('/')}-transformers"
    if uri.startswith("file:"):
        return str(store.local_path(uri))
    return str(store.cache_dir / "converted" / uri.replace("/", "_").replace(":", ""))


_state: ProcessState | None = None


def current() -> ProcessState:
    global _state
    if _state is None:
        settings = get_settings()
        pool = os.environ.get("MODELFARM_WORKER_POOL", "cpu")
        requested = "cuda" if pool == "gpu" else "cpu"
        device = resolve_device(requested, settings.device_override)
        gpu = pool == "gpu"
        _state = ProcessState(
            pool=pool,
            device=device,
            # The GPU pool decides as on a CUDA host even where the device override runs it
            # on the CPU, so that the override exercises the GPU's code path.
            backend=resolve_backend(settings.inference_backend, requested if gpu else device),
            cache=ModelCache(max_models=settings.model_cache_size),
            precision="mixed" if gpu and settings.gpu_mixed_precision else "fp32",
            batch_tokens=settings.gpu_batch_tokens if gpu else settings.batch_tokens,
            batch_size=settings.gpu_batch_size if gpu else settings.batch_size,
        )
    return _state
