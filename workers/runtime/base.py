"""The small interface every model backend implements, and the errors it speaks in.

A job runs items through a runner in two steps: `prepare` checks one item on its own, so a bad
line becomes one error line instead of failing the job, and `run` does the real work on many
prepared items at once, which is where batching pays.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s'\"`,;:)]+")


def without_paths(message: str) -> str:
    """A library's message with absolute file paths blanked: messages reach tenants, and the
    farm's paths are none of their business."""
    return _ABSOLUTE_PATH.sub("<path>", message)


class ItemError(Exception):
    """One item cannot be run; the job goes on and the item gets a line in the error file."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Stopped(Exception):
    """run() was asked to stop between micro-batches; the outputs of that call are dropped."""


class ModelLoadError(Exception):
    """The model cannot be loaded or used at all, so the job fails with this message.

    `transient`: the trouble is this worker's, not the model's (it ran out of memory, on the
    GPU say): the shard is given back for another attempt, and the job is not failed while
    other workers may load the model."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load one model version in a worker process."""

    key: str  #: cache key, e.g. "minilm@1" or "ten_x/my-clf@2"
    framework: str  #: "sentence-transformers" | "transformers" | "sklearn" | "gguf"
    #: "feature-extraction" | "text-classification" | "classification" | "regression" |
    #: "text-generation"
    task: str
    path: str  #: a model directory (transformers / sentence-transformers) or a .skops file
    device: str = "cpu"  #: "cpu" | "cuda" | "cuda:0" ...
    backend: str = "torch"  #: text models: "torch" | "onnx" (workers/runtime/onnx.py)
    #: text models on ONNX Runtime: the local folder of this version's graph (made if absent)
    graph_dir: str | None = None
    #: text models on torch: "fp32", or "mixed" (autocast: fp16 on CUDA, bf16 on a CPU that
    #: stands in for a GPU through the device override); the GPU pool runs mixed. A job may
    #: choose "fp32", "bf16" (torch autocast) or "int8" (ONNX Runtime): runtime/precision.py
    precision: str = "fp32"
    #: a GGUF model's path is the .gguf file; this local folder holds its transformers copy
    #: (converted on first use when absent: workers/runtime/gguf_models.py)
    converted_dir: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """Knobs for one run.

    batch_tokens was measured with all-MiniLM-L6-v2 on a 2-core CPU: with torch, 1024-4096
    were equally fast (1.1-1.2x SentenceTransformer.encode over 2000 sentences of 4-250 words)
    and 8192 no faster than encode, as activations stop fitting in cache; with ONNX Runtime
    over bench/embeddings.py's 3000 sentences, 1024 tokens / 64 items ran 7.6 s, 4096 / 128
    8.5 s, 8192 / 256 9.7 s. A GPU wants larger budgets.
    """

    batch_tokens: int = 1024  #: token budget per micro-batch (padded length x items)
    batch_size: int = 64  #: max items per micro-batch
    max_chars: int = 20000  #: longer text inputs are ItemError("input_too_long", ...)
    max_line_bytes: int = 1024 * 1024  #: longer input lines are ItemError("line_too_long", ...)
    #: a longer output line is that item's error line ("output_too_large") instead
    max_output_bytes: int = 1024 * 1024
    #: asked before every micro-batch; True makes run() raise Stopped (a cancel, a lost lease)
    should_stop: Callable[[], bool] | None = field(default=None, compare=False)
    #: told each text's token count (what the model reads, special tokens included) when a
    #: text runner tokenizes a call's values, so tokens are counted where they are made
    on_tokens: Callable[[list[int]], None] | None = field(default=None, compare=False)
    #: text generation: told each value's completion tokens (what the model wrote), with
    #: `on_tokens` told its prompt tokens (what it read)
    on_completion_tokens: Callable[[list[int]], None] | None = field(default=None, compare=False)
    # Image models (workers/runtime/vision.py).
    top_k: int = 5  #: image-classification: the labels an output scores
    normalize: bool = False  #: image-feature-extraction: L2-normalise the embedding
    max_image_pixels: int = 40_000_000  #: a larger image is ItemError("image_too_large", ...)
    batch_pixels: int = 16_000_000  #: source pixels per micro-batch of images
    #: speech: longer audio is ItemError("audio_too_long", ...) (MAX_AUDIO_SECONDS)
    max_audio_seconds: float = 600.0
    #: text generation: most tokens (prompt + completion) the sequences decoding together
    #: may hold in the KV cache
    kv_tokens: int = 32768
    #: text generation: most sequences decoding together (docs/decisions/0011: on a 2-core CPU
    #: 32 rows ran 1.4x padded batches of 16, 64 rows slower than 32)
    max_rows: int = 32
    #: text generation: `max_tokens` above this is lowered to it (MAX_GENERATION_TOKENS)
    max_new_tokens: int = 4096
    #: the job's `params`, for what a task reads beside its items (zero-shot labels, text
    #: generation's sampling defaults: a line's own values in its `input` override them)
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: text generation: told (index of the value in that run() call, a text delta) as text is
    #: decoded; the deltas of one value concatenate to its final text
    on_text: Callable[[int, str], None] | None = field(default=None, compare=False)


@runtime_checkable
class Runner(Protocol):
    """A loaded model that turns prepared items into JSON-serialisable outputs."""

    def prepare(self, value: Any, options: RunOptions) -> Any:
        """Validate one item's `input` and return the value to pass to run().

        Raises ItemError with one of the codes "invalid_input_type", "input_too_long",
        "invalid_features", "empty_input".
        """
        ...

    def run(self, values: list[Any], options: RunOptions) -> list[Any]:
        """Outputs for prepared values, in the same order, made of plain lists/floats/str."""
        ...
