"""Fine-tuning a transformers encoder into a text classifier, in a plain torch loop.

A plain loop rather than transformers.Trainer: the worker needs a stop check every step,
throttled progress, and a checkpoint it can upload after each epoch and resume from on another
machine, and the loop is short enough that owning it is cheaper than bending Trainer to that.

Resuming gives the same weights as not stopping: every epoch reseeds torch (dropout) and
shuffles with its own generator (seed + epoch), and the checkpoint carries the optimizer and
scheduler state, so epoch N does the same arithmetic whichever process runs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from sklearn.metrics import f1_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from workers.runtime.base import ModelLoadError, Stopped
from workers.runtime.text import _sentence_transformer_layout
from workers.runtime.training import Examples, TrainingError, split_indices

log = logging.getLogger(__name__)

_CHECKPOINT_FORMAT = 1
_PROGRESS_INTERVAL_S = 1.0
_MAX_GRAD_NORM = 1.0


@dataclass
class FinetuneResult:
    """What the job records: metrics on the held-out texts, and the class names in id order."""

    #: accuracy, f1_macro, train_loss, train_examples, validation_examples, evaluated_on
    metrics: dict[str, Any]
    labels: list[str]


@dataclass
class _Checkpoint:
    path: Path
    epoch: int  #: 1-based, the last epoch completed
    global_step: int
    labels: list[str]
    train_loss: float


def finetune(
    examples: Examples,
    params: dict[str, Any],
    base_path: str,
    output_dir: str,
    checkpoint_dir: str,
    device: str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[dict[str, Any]], None] = lambda progress: None,
    on_checkpoint: Callable[[int], None] = lambda epoch: None,
) -> FinetuneResult:
    """Train a sequence classifier on examples and save it to output_dir.

    params are check_finetune_params' output. A checkpoint of the same job (same params and
    examples) in checkpoint_dir is resumed from the epoch after it; any other is ignored and
    replaced. Raises Stopped when should_stop() turns true, leaving the last checkpoint.
    """
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated
    texts = [str(text) for text in examples.inputs]
    labels = [str(label) for label in examples.labels]
    names = sorted(set(labels))
    if len(names) < 2:
        raise TrainingError(
            "invalid_training_data",
            f"the labels have only one class ({names[0]!r}); a classifier needs at least two",
        )
    seed = int(params["seed"])
    fingerprint = _fingerprint(params, texts, labels)
    checkpoint = _read_checkpoint(Path(checkpoint_dir), fingerprint)
    if checkpoint is not None:
        names = checkpoint.labels
    label_ids = {name: i for i, name in enumerate(names)}
    targets = [label_ids[label] for label in labels]
    train, validation = split_indices(labels, params["validation_split"], seed, stratify=True)

    torch.manual_seed(seed)  # the new head's initial weights
    model, tokenizer = _load_base(base_path, names)
    model.to(device)
    max_length = min(int(params["max_length"]), _position_limit(model))
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    batches = _Batches(encoded, targets, tokenizer, torch.device(device))

    epochs = int(params["epochs"])
    batch_size = int(params["batch_size"])
    steps_per_epoch = math.ceil(len(train) / batch_size)
    steps_total = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(params["learning_rate"]))
    # transformers leaves its schedules unannotated.
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps_total)  # type: ignore[no-untyped-call]

    start_epoch, step, train_loss = 1, 0, math.nan
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer, scheduler)
        start_epoch, step, train_loss = (
            checkpoint.epoch + 1,
            checkpoint.global_step,
            checkpoint.train_loss,
        )
        log.info("resuming fine-tuning at epoch %d of %d", start_epoch, epochs)

    progress = _Progress(on_progress, steps_total, epochs)
    for epoch in range(start_epoch, epochs + 1):
        step, train_loss = _train_epoch(
            model,
            optimizer,
            scheduler,
            batches,
            train,
            batch_size,
            seed,
            epoch,
            step,
            should_stop,
            progress,
        )
        _write_checkpoint(
            Path(checkpoint_dir),
            {
                "format": _CHECKPOINT_FORMAT,
                "epoch": epoch,
                "global_step": step,
                "labels": names,
                "train_loss": train_loss,
                "fingerprint": fingerprint,
            },
            model,
            optimizer,
            scheduler,
        )
        on_checkpoint(epoch)

    evaluated = validation or train
    accuracy, f1 = _evaluate(model, batches, evaluated, batch_size, len(names))
    _save_output(model, tokenizer, Path(output_dir))
    metrics: dict[str, Any] = {
        "accuracy": accuracy,
        "f1_macro": f1,
        "train_loss": train_loss,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "evaluated_on": "validation" if validation else "training",
    }
    return FinetuneResult(metrics=metrics, labels=names)


def _fingerprint(params: dict[str, Any], texts: list[str], labels: list[str]) -> str:
    """Identifies the job a checkpoint belongs to; resuming any other job's would be wrong."""
    digest = hashlib.sha256()
    digest.update(json.dumps(params, sort_keys=True).encode())
    for text, label in zip(texts, labels, strict=True):
        digest.update(json.dumps([text, label]).encode())
    return digest.hexdigest()


def _load_base(base_path: str, names: list[str]) -> tuple[Any, Any]:
    """The base encoder with a fresh head for `names`, and its tokenizer, from local files only.

    A sentence-transformers directory (the builtin minilm) keeps its encoder where modules.json
    says; a transformers directory is used as it is.
    """
    try:
        directory, _ = _sentence_transformer_layout(Path(base_path))
    except ModelLoadError as exc:
        raise TrainingError("invalid_base_model", str(exc)) from exc
    if not any(directory.glob("*.safetensors")):
        raise TrainingError(
            "invalid_base_model",
            f"{directory} has no *.safetensors weights; pickle-based weights are refused",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            directory, local_files_only=True, trust_remote_code=False
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            directory,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            # A base that is already a classifier gets a new head of the right size.
            ignore_mismatched_sizes=True,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(
            "invalid_base_model", f"cannot load {directory}: {type(exc).__name__}: {exc}"
        ) from exc
    if tokenizer.pad_token_id is None:
        raise TrainingError("invalid_base_model", f"the tokenizer in {directory} has no pad token")
    model.config.problem_type = "single_label_classification"
    return model, tokenizer


def _position_limit(model: Any) -> int:
    positions = getattr(model.config, "max_position_embeddings", None)
    return int(positions) if positions else 512


class _Batches:
    """Model inputs for any subset of examples, padded to that subset's longest text."""

    def __init__(
        self, encoded: Any, targets: list[int], tokenizer: Any, device: torch.device
    ) -> None:
        self.columns = {key: list(encoded[key]) for key in encoded.keys()}
        self.targets = targets
        self.device = device
        self.pad_values = {
            "input_ids": tokenizer.pad_token_id,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
        }  # attention_mask and anything else pad with 0

    def get(self, indices: list[int], with_labels: bool = True) -> dict[str, torch.Tensor]:
        width = max(len(self.columns["input_ids"][i]) for i in indices)
        batch = {}
        for key, rows in self.columns.items():
            pad = self.pad_values.get(key, 0)
            padded = [rows[i] + [pad] * (width - len(rows[i])) for i in indices]
            batch[key] = torch.tensor(padded, dtype=torch.long, device=self.device)
        if with_labels:
            labels = [self.targets[i] for i in indices]
            batch["labels"] = torch.tensor(labels, dtype=torch.long, device=self.device)
        return batch


class _Progress:
    """Calls on_progress at most once a second, and always at the end of an epoch."""

    def __init__(
        self, callback: Callable[[dict[str, Any]], None], steps_total: int, epochs: int
    ) -> None:
        self.callback = callback
        self.steps_total = steps_total
        self.epochs = epochs
        self.last = -math.inf  # so the first step of a run is reported at once

    def due(self, epoch_done: bool) -> bool:
        return epoch_done or time.monotonic() - self.last >= _PROGRESS_INTERVAL_S

    def report(self, step: int, epoch: int, loss: float) -> None:
        self.last = time.monotonic()
        self.callback(
            {
                "step": step,
                "steps_total": self.steps_total,
                "epoch": epoch,
                "epochs": self.epochs,
                "loss": loss,
            }
        )


def _train_epoch(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    batches: _Batches,
    train: list[int],
    batch_size: int,
    seed: int,
    epoch: int,
    step: int,
    should_stop: Callable[[], bool],
    progress: _Progress,
) -> tuple[int, float]:
    """One pass over the training examples; returns (global step, mean loss of the epoch)."""
    torch.manual_seed(seed + epoch)  # dropout masks, the same in a resumed run
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
    model.train()
    loss_sum = torch.zeros((), device=batches.device)
    mean_loss = math.nan
    steps = math.ceil(len(train) / batch_size)
    for number, start in enumerate(range(0, len(train), batch_size), start=1):
        if should_stop():
            raise Stopped()
        indices = [train[i] for i in order[start : start + batch_size].tolist()]
        loss = model(**batches.get(indices)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), _MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_sum += loss.detach()
        if progress.due(epoch_done=number == steps):
            # .item() waits for the GPU, so the loss is only read when it is reported.
            mean_loss = float(loss_sum.item()) / number
            progress.report(step, epoch, mean_loss)
    return step, mean_loss


def _evaluate(
    model: Any, batches: _Batches, indices: list[int], batch_size: int, n_labels: int
) -> tuple[float, float]:
    """(accuracy, macro F1) of the model on the given examples."""
    model.eval()
    predicted: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            logits = model(**batches.get(part, with_labels=False)).logits
            predicted.extend(logits.argmax(dim=-1).tolist())
    truth = [batches.targets[i] for i in indices]
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    f1 = f1_score(truth, predicted, labels=list(range(n_labels)), average="macro", zero_division=0)
    return float(accuracy), float(f1)


def _save_output(model: Any, tokenizer: Any, output_dir: Path) -> None:
    # Safetensors is save_pretrained's default (and, from transformers 5, its only format);
    # text.load_text_classifier refuses anything else.
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def _write_checkpoint(
    root: Path, state: dict[str, Any], model: Any, optimizer: Any, scheduler: Any
) -> None:
    """Write epoch-N/ under a temporary name and rename it, so a crash mid-write leaves the
    previous checkpoint as the latest complete one; then drop the older ones."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{state['epoch']}"
    partial = root / f".partial-{final.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_model(model, str(partial / "model.safetensors"))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    (partial / "state.json").write_text(json.dumps(state), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _read_checkpoint(root: Path, fingerprint: str) -> _Checkpoint | None:
    """The latest complete checkpoint of this job in root, or None to start over."""
    found: list[tuple[int, Path]] = []
    for path in root.glob("epoch-*"):
        number = path.name.removeprefix("epoch-")
        if number.isdigit() and (path / "state.json").is_file():
            found.append((int(number), path))
    if not found:
        return None
    _, path = max(found)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.get("format") != _CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: it belongs to other params or examples", path)
        return None
    return _Checkpoint(
        path=path,
        epoch=int(state["epoch"]),
        global_step=int(state["global_step"]),
        labels=[str(name) for name in state["labels"]],
        train_loss=float(state["train_loss"]),
    )


def _restore(checkpoint: _Checkpoint, model: Any, optimizer: Any, scheduler: Any) -> None:
    # weights_only: a checkpoint comes back from the artifact store, so it is not trusted to
    # hold arbitrary pickles; state dicts need only tensors and plain containers.
    load_model(model, str(checkpoint.path / "model.safetensors"))
    optimizer.load_state_dict(
        torch.load(checkpoint.path / "optimizer.pt", map_location="cpu", weights_only=True)
    )
    scheduler.load_state_dict(
        torch.load(checkpoint.path / "scheduler.pt", map_location="cpu", weights_only=True)
    )
