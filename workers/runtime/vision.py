"""Image models on torch: classification (label and top-k scores) and pooled embeddings.

The preprocessing is the model's own image processor from its preprocessor_config.json (resize,
crop, rescale, normalise as the model was trained), in its PIL implementation: transformers 5
also has torchvision ones, which the farm does not install, and the PIL one is what gives the
same numbers as in-process transformers without it. Only classes transformers implements
itself are loaded (trust_remote_code is off), weights from safetensors only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

from workers.runtime.base import ModelLoadError, Runner, RunOptions, Stopped
from workers.runtime.images import PreparedImage, pixel_batches, prepare_image
from workers.runtime.text import label_info
from workers.runtime.tokens import scores

log = logging.getLogger(__name__)


def computing(device: torch.device, precision: str) -> contextlib.ExitStack:
    """No autograd; in the GPU pool, half precision (fp16 autocast on CUDA, bf16 on a CPU
    standing in for a GPU), as text models run there; bf16 autocast when the job chose it
    (workers/runtime/precision.py, docs/decisions/0021)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if precision == "mixed":
        half = torch.float16 if device.type == "cuda" else torch.bfloat16
        stack.enter_context(torch.autocast(device_type=device.type, dtype=half))
    elif precision == "bf16":
        stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
    return stack


class _ImageRunner:
    backend = "torch"

    def __init__(self, model: Any, processor: Any, device: str, precision: str) -> None:
        self.model = model
        self.processor = processor
        self.device = torch.device(device)
        self.precision = precision
        # The frozen graph of a convolutional network on a CPU (compiled_for_cpu), else None:
        # it answers for batches of the shape it was checked with, the model for any other.
        self.frozen: Any = None
        self.frozen_shape: tuple[int, ...] = ()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The task's tensor (logits, or the pooled vectors) for a micro-batch."""
        if self.precision == "bf16":
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if self.frozen is not None and tuple(pixel_values.shape[1:]) == self.frozen_shape:
            return self.frozen(pixel_values)  # type: ignore[no-any-return]
        return head(self.model, self.task, pixel_values)

    task = "image-classification"

    def prepare(self, value: Any, options: RunOptions) -> PreparedImage:
        return prepare_image(value, options.max_image_pixels)

    def _computing(self) -> contextlib.ExitStack:
        return computing(self.device, self.precision)

    def batches(
        self, values: list[PreparedImage], options: RunOptions
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, pixel_values) per micro-batch, cut by source pixels (images.pixel_batches)."""
        cuts = pixel_batches([v.pixels for v in values], options.batch_pixels, options.batch_size)
        for indices in cuts:
            if options.should_stop is not None and options.should_stop():
                raise Stopped()
            pictures = [values[i].rgb(options.max_image_pixels) for i in indices]
            inputs = self.processor(images=pictures, return_tensors="pt")
            yield indices, inputs["pixel_values"].to(self.device)


class ImageClassificationRunner(_ImageRunner):
    """{"label": the top label, "scores": {label: probability} for the top_k labels}."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.labels, self.multi_label = label_info(self.model.config)

    def run(self, values: list[PreparedImage], options: RunOptions) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in values]
        top_k = max(1, min(options.top_k, len(self.labels)))
        with self._computing():
            for indices, pixel_values in self.batches(values, options):
                logits = self.forward(pixel_values).float()
                probs = torch.sigmoid(logits) if self.multi_label else logits.softmax(dim=-1)
                top = probs.topk(top_k, dim=-1)
                for index, ids, row in zip(
                    indices, top.indices.cpu().tolist(), top.values.cpu().tolist(), strict=True
                ):
                    picked = scores([self.labels[i] for i in ids], row)
                    results[index] = picked
        return results


class ImageEmbeddingRunner(_ImageRunner):
    """The model's pooled output as a list of floats; L2-normalised when params.normalize."""

    task = "image-feature-extraction"

    def run(self, values: list[PreparedImage], options: RunOptions) -> list[list[float]]:
        results: list[list[float]] = [[] for _ in values]
        with self._computing():
            for indices, pixel_values in self.batches(values, options):
                vectors = self.forward(pixel_values).float()
                if options.normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                for index, vector in zip(indices, vectors.cpu().tolist(), strict=True):
                    results[index] = vector
        return results


def head(model: Any, task: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """What a task reads of the model's outputs: the logits, or the pooled vectors."""
    outputs = model(pixel_values=pixel_values)
    return outputs.logits if task == "image-classification" else pooled(outputs)


class _Head(torch.nn.Module):
    """The model as a function of pixel_values alone, returning the task's tensor: what
    torch.jit.trace records."""

    def __init__(self, model: Any, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return head(self.model, self.task, pixel_values)


#: A frozen graph is kept only if it answers as the model does, to within this (absolute, and
#: relative to the largest output): folding batch norms into convolutions rounds differently.
FROZEN_TOLERANCE = 1e-5
#: The same at bf16, against the model under bf16 autocast: the graph keeps its weights in
#: bfloat16 (8 bits of mantissa) and folds batch norms before rounding them.
FROZEN_TOLERANCE_BF16 = 5e-2


def compile_for_cpu(runner: _ImageRunner) -> None:
    """Freeze a convolutional network for CPU inference (docs/decisions/0013): traced once,
    frozen, then torch.jit.optimize_for_inference folds each batch norm into its convolution,
    fuses the activations and keeps the weights in oneDNN's layout instead of reordering them
    at every call. At bf16 (decision 0021) the model is traced under bf16 autocast in
    channels-last layout and frozen with its bf16 weights, without optimize_for_inference. The
    graph is checked against the model on probe batches of two sizes, laid out as forward()
    will hand them over; a model that cannot be traced, or whose graph answers differently,
    runs as it is."""
    model = runner.model
    if runner.device.type != "cpu" or runner.precision not in ("fp32", "bf16"):
        return
    if sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) < 2:
        return  # a ViT's one convolution (its patches) is not worth a second graph
    picture = Image.new("RGB", (64, 48), (120, 80, 40))
    pixel_values = runner.processor(images=[picture], return_tensors="pt")["pixel_values"]
    shape = tuple(pixel_values.shape[1:])
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((3, *shape), generator=generator)
    bf16 = runner.precision == "bf16"
    if bf16:
        probe = probe.contiguous(memory_format=torch.channels_last)  # as forward() passes it
    tolerance = FROZEN_TOLERANCE_BF16 if bf16 else FROZEN_TOLERANCE
    try:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
        with torch.no_grad(), autocast, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.requires_grad_(False)  # autocast's weight casts become graph constants
            if bf16:
                # oneDNN's bf16 convolutions (AMX) want channels-last tensors; traced under
                # autocast, the graph records its casts and freezing keeps bf16 weights.
                model.to(memory_format=torch.channels_last)
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]  # unannotated
                _Head(model, runner.task).eval(), probe[:2], strict=False
            )
            frozen = torch.jit.freeze(traced)
            if not bf16:
                frozen = torch.jit.optimize_for_inference(frozen)
            for batch in (probe[:1], probe):
                expected = head(model, runner.task, batch).float()
                got = frozen(batch)
                for _ in range(2):  # the first calls of a frozen graph run its profiling passes
                    got = frozen(batch)
                scale = max(1.0, float(expected.abs().max()))
                if not torch.allclose(got.float(), expected, rtol=0, atol=tolerance * scale):
                    log.info("the frozen graph differs from the model; it runs unfrozen")
                    return
    except Exception:  # noqa: BLE001 - any failure to trace leaves the model as it is
        log.info("the model cannot be frozen for the CPU; it runs unfrozen", exc_info=True)
        return
    runner.frozen, runner.frozen_shape = frozen, shape


def pooled(outputs: Any) -> torch.Tensor:
    """One vector per image: the model's pooler output (ResNet's is (n, c, 1, 1))."""
    value = getattr(outputs, "pooler_output", None)
    if value is None:
        raise ModelLoadError("the model has no pooled output (pooler_output)")
    vectors: torch.Tensor = value.flatten(start_dim=1)  # outputs are the model's own (Any)
    return vectors


#: the largest side a model's processor may resize or crop a picture to: what one picture costs
#: the batch is bounded by it, whatever the upload's preprocessor_config.json says
MAX_PROCESSED_SIDE = 1024
_SIDES = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")


def check_processor_size(processor: Any) -> None:
    """Refuse a processor that makes pictures larger than MAX_PROCESSED_SIDE on a side."""
    for name in ("size", "crop_size"):
        value = getattr(processor, name, None)
        if isinstance(value, int | float):
            sides: list[Any] = [value]
        elif isinstance(value, dict):
            sides = [value.get(key) for key in _SIDES]
        else:  # transformers' SizeDict, or None
            sides = [getattr(value, key, None) for key in _SIDES]
        for side in sides:
            if isinstance(side, int | float) and side > MAX_PROCESSED_SIDE:
                raise ModelLoadError(
                    f"preprocessor_config.json's {name} is {side}; the farm serves image "
                    f"models whose pictures are at most {MAX_PROCESSED_SIDE} pixels a side"
                )


def load_image_runner(path: str, task: str, device: str, precision: str = "fp32") -> Runner:
    root = Path(path)
    if not (root / "preprocessor_config.json").is_file():
        raise ModelLoadError("an image model needs its preprocessor_config.json")
    if not any(root.glob("*.safetensors")):
        raise ModelLoadError("the model has no *.safetensors weights; pickled weights are refused")
    processor = AutoImageProcessor.from_pretrained(
        root, backend="pil", local_files_only=True, trust_remote_code=False
    )
    check_processor_size(processor)
    auto_class = AutoModelForImageClassification if task == "image-classification" else AutoModel
    model, info = auto_class.from_pretrained(
        root,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=False,
        output_loading_info=True,
    )
    missing = list(info.get("missing_keys") or [])
    if missing:
        # Randomly initialised weights would answer differently on every load.
        raise ModelLoadError(
            f"the weights lack {len(missing)} tensor(s) the {task} model needs "
            f"(e.g. {missing[0]}); was it saved as another kind of model?"
        )
    model = model.to(device).eval()
    if task == "image-classification":
        if int(getattr(model.config, "num_labels", 0) or 0) < 2:
            raise ModelLoadError("image-classification needs a model with at least 2 labels")
        classifier = ImageClassificationRunner(model, processor, device, precision)
        compile_for_cpu(classifier)
        return classifier
    embedder = ImageEmbeddingRunner(model, processor, device, precision)
    compile_for_cpu(embedder)
    return embedder
