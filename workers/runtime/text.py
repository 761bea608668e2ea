"""Torch/transformers runners: sentence embeddings and text classification.

Tokenizing, length-sorted micro-batches and padding come from workers/runtime/tokens.py, which
the ONNX Runtime backend (workers/runtime/onnx.py) shares; here the batches meet torch.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from workers.runtime import ranking
from workers.runtime.base import ModelLoadError, RunOptions
from workers.runtime.tokens import TextInputs, scores

# Sentence-transformers modules whose effect this runner reproduces; anything else (Dense,
# LayerNorm, custom code) would change the vectors, so such a model is refused, not approximated.
_ST_SUPPORTED_MODULES = {"Transformer", "Pooling", "Normalize"}
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class _TextRunner(TextInputs):
    """A torch model behind the shared text batching."""

    backend = "torch"
    #: Why this runner is torch although ONNX Runtime was asked for (workers/runtime/onnx.py).
    fallback_reason: str | None = None

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        device: str,
        lowercase: bool = False,
        precision: str = "fp32",
    ) -> None:
        super().__init__(tokenizer, max_length, lowercase)
        self.model = model
        self.device = torch.device(device)
        self.precision = precision

    def _computing(self) -> contextlib.ExitStack:
        """No autograd; with mixed precision, matrix products in half precision (fp16 on CUDA,
        bf16 on CPU, the kind CPUs autocast to) while reductions and softmax stay fp32."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.precision == "mixed":
            half = torch.float16 if self.device.type == "cuda" else torch.bfloat16
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=half))
        elif self.precision == "bf16":  # chosen by the user (workers/runtime/precision.py)
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
        return stack

    def _tensors(self, arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}


class EmbeddingRunner(_TextRunner):
    """Sentence embeddings: pooled token states, L2-normalised, as lists of floats."""

    def __init__(self, *args: Any, pooling: tuple[str, ...] = ("mean",), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pooling = pooling

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The normalised vectors of one padded batch (also what the ONNX graph computes)."""
        hidden = self.model(**inputs).last_hidden_state
        pooled = _pool(hidden, inputs["attention_mask"], self.pooling)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)

    def prepare(self, value: Any, options: RunOptions) -> Any:
        return ranking.prepare_embedding_item(value, options, super().prepare)

    def run(self, values: list[Any], options: RunOptions) -> list[Any]:
        """Vectors for texts; rank items scored by cosine (workers/runtime/ranking.py)."""
        return ranking.run_embedding_items(values, options, self.embed_texts)

    def embed_texts(self, values: list[str], options: RunOptions) -> list[list[float]]:
        results: list[list[float]] = [[] for _ in values]
        if not values:
            return results
        with self._computing():
            for indices, arrays in self.padded_batches(values, options):
                vectors = self.embed(self._tensors(arrays))
                for index, vector in zip(indices, vectors.cpu().tolist(), strict=True):
                    results[index] = vector
        return results


class TextClassificationRunner(_TextRunner):
    """Sequence classification: {"label": str, "scores": {label: probability}}."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.labels, self.multi_label = label_info(self.model.config)

    def probabilities(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-label probabilities of one padded batch (also what the ONNX graph computes)."""
        logits = self.model(**inputs).logits.float()
        # Multi-label heads are trained with independent sigmoids; a softmax would distort them.
        return torch.sigmoid(logits) if self.multi_label else logits.softmax(dim=-1)

    def run(self, values: list[str], options: RunOptions) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in values]
        if not values:
            return results
        with self._computing():
            for indices, arrays in self.padded_batches(values, options):
                probs = self.probabilities(self._tensors(arrays))
                for index, row in zip(indices, probs.cpu().tolist(), strict=True):
                    results[index] = scores(self.labels, row)
        return results


def label_info(config: Any) -> tuple[list[str], bool]:
    """A classifier config's labels in output order, and whether it is multi-label."""
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    return labels, config.problem_type == "multi_label_classification"


def _pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])  # padding is forced to the right, so 0 is [CLS]
        elif mode == "max":
            parts.append(hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values)
        else:
            total = (hidden * weights).sum(dim=1)
            count = weights.sum(dim=1).clamp(min=1e-9)
            parts.append(total / (count if mode == "mean" else count.sqrt()))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def load_embedding_runner(path: str, device: str, precision: str = "fp32") -> EmbeddingRunner:
    """A sentence-transformers directory, or a plain transformers encoder directory."""
    root = Path(path)
    transformer_dir, pooling_dir = _sentence_transformer_layout(root)
    st_config = _read_json(transformer_dir / "sentence_bert_config.json") or {}
    pooling_config = _read_json(pooling_dir / "config.json") if pooling_dir else None
    tokenizer = _load_tokenizer(transformer_dir)
    tokenizer.padding_side = "right"  # cls pooling reads position 0
    model = _load_model(AutoModel, transformer_dir, device)
    max_length = st_config.get("max_seq_length") or _default_max_length(tokenizer, model)
    return EmbeddingRunner(
        model,
        tokenizer,
        int(max_length),
        device,
        lowercase=bool(st_config.get("do_lower_case", False)),
        precision=precision,
        pooling=_pooling_modes(pooling_config),
    )


def load_text_classifier(
    path: str, device: str, precision: str = "fp32"
) -> TextClassificationRunner:
    root = Path(path)
    tokenizer = _load_tokenizer(root)
    model = _load_model(AutoModelForSequenceClassification, root, device)
    num_labels = int(getattr(model.config, "num_labels", 0) or 0)
    if num_labels < 2:
        raise ModelLoadError(
            f"the model has {num_labels} output label(s); "
            "text-classification needs at least 2 (a 1-output head is a regressor)"
        )
    return TextClassificationRunner(
        model, tokenizer, _default_max_length(tokenizer, model), device, precision=precision
    )


def _sentence_transformer_layout(root: Path) -> tuple[Path, Path | None]:
    """(transformer dir, pooling dir or None) from modules.json, refusing unknown modules."""
    modules = _read_json(root / "modules.json")
    if modules is None:
        pooling = root / "1_Pooling"
        return root, pooling if (pooling / "config.json").is_file() else None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError("modules.json must be a list of modules")
    transformer_dir, pooling_dir = root, None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_SUPPORTED_MODULES:
            raise ModelLoadError(f"unsupported sentence-transformers module {kind!r}")
        if kind == "Transformer":
            transformer_dir = _inside(root, module.get("path", ""))
        elif kind == "Pooling":
            pooling_dir = _inside(root, module.get("path", ""))
    return transformer_dir, pooling_dir


def _inside(root: Path, relative: object) -> Path:
    """A module folder named by modules.json, which must stay inside the model's own folder
    (an absolute or `..` path could reach another tenant's model)."""
    if not isinstance(relative, str):
        raise ModelLoadError("modules.json: a module path must be a string")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ModelLoadError(f"modules.json: module path {relative!r} leaves the model folder")
    return path


def _pooling_modes(config: dict[str, Any] | None) -> tuple[str, ...]:
    if not config:
        return ("mean",)
    mode = config.get("pooling_mode")
    if mode is None:  # the older format: one boolean per mode
        modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key))
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unsupported = [m for m in modes if m not in _POOLING_MODES]
    if unsupported:
        raise ModelLoadError(f"pooling {unsupported} is not supported; supported: {_POOLING_MODES}")
    return modes or ("mean",)


def _require_safetensors(directory: Path) -> None:
    if not directory.is_dir():
        raise ModelLoadError("the model's folder does not exist")
    if not any(directory.glob("*.safetensors")):
        raise ModelLoadError("the model has no *.safetensors weights; pickled weights are refused")


def _load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        directory, local_files_only=True, trust_remote_code=False
    )
    if tokenizer.pad_token_id is None:
        raise ModelLoadError("the model's tokenizer has no padding token")
    return tokenizer


def _load_model(auto_class: Any, directory: Path, device: str) -> PreTrainedModel:
    _require_safetensors(directory)
    model = auto_class.from_pretrained(
        directory, use_safetensors=True, local_files_only=True, trust_remote_code=False
    )
    loaded: PreTrainedModel = model.to(device).eval()  # from_pretrained of an Auto class: Any
    return loaded


def _default_max_length(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    # model_max_length is a huge sentinel when a tokenizer does not know its model's limit.
    limit = min(int(tokenizer.model_max_length), 512)
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(limit, int(positions)) if positions else limit


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"cannot read {path.name} ({type(exc).__name__})") from exc
