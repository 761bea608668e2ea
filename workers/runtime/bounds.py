"""A transformers model's size, known from its config before anything is built.

An uploaded config.json is hostile: `num_hidden_layers: 100000` in a 1.2 KB archive kept a
worker building a model for minutes at gigabytes. So a model is measured before it is loaded:

1. the config's structural counts (layers, blocks, labels) are bounded, since even an empty
   module costs memory and time to construct;
2. the model is built on torch's meta device (shapes, no storage) from the config as a dict,
   its parameters counted and their bytes summed, and both checked against the limits;
3. every parameter the model has must be in the safetensors it ships, with the same shape
   (read from the files' headers only): a model whose weights are missing or do not match its
   config would be run with random weights, so it is refused.

`check_config(config, task, weights, limits)` takes a plain dict, so any task's model goes
through it (the task picks the auto class: feature extraction, classification of text or
images, generation, ...). Plain functions, no Celery, no database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.runtime.base import ModelLoadError

#: The auto class a task's runner loads; a task not named here is built as its base model.
TASK_CLASSES = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "zero-shot-classification": "AutoModelForSequenceClassification",
    "text-ranking": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
    "text-generation": "AutoModelForCausalLM",
    "text2text-generation": "AutoModelForSeq2SeqLM",
    "automatic-speech-recognition": "AutoModelForSpeechSeq2Seq",
}
#: A config key that counts modules (layers, blocks, experts, heads of a stack ...).
_STRUCTURAL = re.compile(r"(^|_)(layers?|blocks?|experts?|depths?|n_layer|stages?)($|_)")
MAX_STRUCTURAL_COUNT = 1024  # the deepest published models have a few hundred layers
MAX_LABELS = 10_000  # every output line carries a score per label
#: Parameters a runner never uses, so a file may leave them out (sentence-transformers
#: checkpoints save no pooler; the embedding runner pools the hidden states itself).
UNUSED = {"feature-extraction": re.compile(r"(^|\.)pooler\.")}


class ModelTooLarge(ModelLoadError):
    """Over a size limit (not malformed): the version's error says model_too_large."""


@dataclass(frozen=True)
class ModelLimits:
    max_parameters: int
    max_bytes: int


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    bytes: int


def check_config(
    config: Mapping[str, Any],
    task: str,
    weights: Mapping[str, tuple[int, ...]] | None,
    limits: ModelLimits,
) -> ModelSize:
    """The size of the model `config` describes for `task`; ModelLoadError when it is over a
    limit or, with `weights` (name -> shape of every tensor shipped), when they miss one of
    its parameters or do not match its shape."""
    _check_counts(config)
    model = _build_on_meta(config, task)
    size = _measure(model)
    if size.parameters > limits.max_parameters:
        raise ModelTooLarge(
            f"the model has {size.parameters:,} parameters; the limit is {limits.max_parameters:,}"
        )
    if size.bytes > limits.max_bytes:
        raise ModelTooLarge(
            f"the model's weights take {size.bytes:,} bytes; the limit is {limits.max_bytes:,}"
        )
    if weights is not None:
        _match_weights(model, weights, UNUSED.get(task))
    return size


def check_model_dir(directory: Path, task: str, limits: ModelLimits) -> ModelSize:
    """check_config on a model folder's config.json and the headers of its safetensors."""
    import json

    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"cannot read config.json ({type(exc).__name__})") from None
    if not isinstance(config, dict):
        raise ModelLoadError("config.json must hold an object")
    return check_config(config, task, safetensors_shapes(directory), limits)


def safetensors_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape from the headers of a folder's *.safetensors files (the
    data is never read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except Exception as exc:  # a corrupt header: safetensors raises its own error types
            raise ModelLoadError(f"unreadable safetensors file ({type(exc).__name__})") from None
    return shapes


def _check_counts(config: Mapping[str, Any]) -> None:
    for key, value in _items(config):
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if _STRUCTURAL.search(key.lower()) and value > MAX_STRUCTURAL_COUNT:
            raise ModelTooLarge(
                f"config.json: {key} is {value:,}; at most {MAX_STRUCTURAL_COUNT} are accepted"
            )
        if key == "num_labels" and value > MAX_LABELS:
            raise ModelTooLarge(f"config.json: {value:,} labels; at most {MAX_LABELS:,}")
    labels = config.get("id2label")
    if isinstance(labels, Mapping) and len(labels) > MAX_LABELS:
        raise ModelTooLarge(f"config.json: {len(labels):,} labels; at most {MAX_LABELS:,}")


def _items(config: Mapping[str, Any], depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of a config and of the configs nested in it (a vision and a text
    config in one, say); lists of counts (per-stage depths) are summed."""
    for key, value in config.items():
        if isinstance(value, Mapping) and depth < 4:
            yield from _items(value, depth + 1)
        elif isinstance(value, list) and value and all(type(v) is int for v in value):
            yield str(key), sum(value)
        else:
            yield str(key), value


def _build_on_meta(config: Mapping[str, Any], task: str) -> Any:
    import torch
    import transformers

    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ModelLoadError("config.json has no model_type")
    fields = {k: v for k, v in config.items() if k != "model_type"}
    try:
        parsed = transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # an unknown model_type, or values the config class refuses
        raise ModelLoadError(f"config.json is not a usable config ({type(exc).__name__})") from None
    auto_class = getattr(transformers, TASK_CLASSES.get(task, "AutoModel"))
    try:
        with torch.device("meta"):
            return auto_class.from_config(parsed, trust_remote_code=False)
    except Exception as exc:  # shapes that do not fit together, a class the task cannot use
        raise ModelLoadError(
            f"config.json does not describe a {task} model ({type(exc).__name__})"
        ) from None


def _measure(model: Any) -> ModelSize:
    parameters = list(model.parameters())  # each shared (tied) parameter once
    count = sum(p.numel() for p in parameters)
    return ModelSize(count, sum(p.numel() * p.element_size() for p in parameters))


def _match_weights(
    model: Any, weights: Mapping[str, tuple[int, ...]], unused: re.Pattern[str] | None
) -> None:
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    shipped = {_strip(name, prefix): shape for name, shape in weights.items()}
    # Names of one shared parameter (tied embeddings): any one of them in the file will do.
    tied: dict[int, list[str]] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(parameter), []).append(_strip(name, prefix))
        shapes[id(parameter)] = tuple(parameter.shape)
    missing: list[str] = []
    for key, names in tied.items():
        found = [n for n in names if n in shipped]
        if not found:
            if unused is None or not any(unused.search(n) for n in names):
                missing.append(names[0])
            continue
        if shipped[found[0]] != shapes[key]:
            raise ModelLoadError(
                f"the weights do not match config.json: {found[0]} is "
                f"{list(shipped[found[0]])} in the safetensors, {list(shapes[key])} by the config"
            )
    if missing and not _shapes_cover(model, weights, unused):
        raise ModelLoadError(
            f"the safetensors lack {len(missing)} of the model's weights "
            f"(first: {', '.join(sorted(missing)[:3])})"
        )


def _shapes_cover(
    model: Any, weights: Mapping[str, tuple[int, ...]], unused: re.Pattern[str] | None
) -> bool:
    """Whether the file holds a tensor of the right shape for every parameter, names aside.

    transformers renames some architectures' weights as it loads them (a checkpoint of ViT
    names `attention.attention.key` what the module calls `k_proj`), so a name that differs
    is not yet a missing weight: what a file can never make up for is the shapes."""
    from collections import Counter

    shipped = Counter(tuple(shape) for shape in weights.values())
    needed: Counter[tuple[int, ...]] = Counter()
    for name, parameter in model.named_parameters():  # tied parameters once
        if unused is None or not unused.search(name):
            needed[tuple(parameter.shape)] += 1
    return all(shipped[shape] >= count for shape, count in needed.items())


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name
