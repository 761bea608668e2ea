"""Training an image classifier: a small ResNet from a config, or a registered model fine-tuned.

The loop, its checkpoints and its resume are text fine-tuning's (workers/runtime/finetune.py):
every epoch reseeds torch and shuffles with its own generator, and the checkpoint carries the
weights (BatchNorm statistics included), optimizer and scheduler, so a run resumed on another
worker does the same arithmetic. What is new here is the data: images decoded with the same
bounds as inference, preprocessed once by the image processor the trained model ships with, so
that serving it preprocesses exactly as training did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTImageProcessorPil,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from workers.runtime.base import ItemError, Stopped
from workers.runtime.finetune import (
    _CHECKPOINT_FORMAT,
    FinetuneResult,
    _Progress,
    _read_checkpoint,
    _restore,
    _write_checkpoint,
)
from workers.runtime.image_archive import class_labels
from workers.runtime.images import decode
from workers.runtime.training import TrainingError, split_indices

log = logging.getLogger(__name__)

#: The preprocessed training set is held in memory as float32; more than this is refused.
MAX_TENSOR_BYTES = 2 * 1024**3
#: Pictures of at most this many values (3 x 64 x 64) train on one CPU thread (_threads_for).
SMALL_IMAGE_VALUES = 3 * 64 * 64


def small_resnet(names: list[str]) -> ResNetForImageClassification:
    """A ResNet of four basic blocks (about 1.2M parameters): enough for small pictures, and
    quick to train on a CPU."""
    config = ResNetConfig(
        num_channels=3,
        embedding_size=32,
        hidden_sizes=[32, 64, 128, 256],
        depths=[1, 1, 1, 1],
        layer_type="basic",
    )
    # id2label sets the label count too (PretrainedConfig's, not an argument ResNetConfig
    # declares).
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    return ResNetForImageClassification(config)


def train_image_classifier(
    members: Iterable[tuple[str, bytes]],
    params: dict[str, Any],
    base_path: str | None,
    output_dir: str,
    checkpoint_dir: str,
    max_pixels: int,
    device: str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[dict[str, Any]], None] = lambda progress: None,
    on_checkpoint: Callable[[int], None] = lambda epoch: None,
) -> FinetuneResult:
    """Train on (path, encoded image) members (the class is the folder: class_labels), evaluate
    on the held-out split, save model and processor to output_dir."""
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated
    processor = _processor(base_path, int(params["image_size"]))
    paths, pixels, digest = preprocess_members(members, processor, max_pixels, params)
    labels = class_labels(paths)
    names = sorted(set(labels))
    if len(names) < 2:
        raise TrainingError("invalid_training_data", "a classifier needs at least two classes")
    seed = int(params["seed"])
    for label in labels:
        digest.update(json.dumps(label).encode())
    fingerprint = digest.hexdigest()
    checkpoint = _read_checkpoint(Path(checkpoint_dir), fingerprint)
    targets = torch.tensor([names.index(label) for label in labels], dtype=torch.long)
    train, validation = split_indices(labels, params["validation_split"], seed, stratify=True)

    torch.manual_seed(seed)  # the new network's (or new head's) initial weights
    model = _model(base_path, names)
    model.to(device)

    epochs, batch_size = int(params["epochs"]), int(params["batch_size"])
    steps_total = math.ceil(len(train) / batch_size) * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(params["learning_rate"]))
    # transformers leaves its schedules unannotated.
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps_total)  # type: ignore[no-untyped-call]
    start_epoch, step, train_loss = 1, 0, math.nan
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer, scheduler)
        start_epoch, step = checkpoint.epoch + 1, checkpoint.global_step
        train_loss = checkpoint.train_loss
        log.info("resuming image training at epoch %d of %d", start_epoch, epochs)

    progress = _Progress(on_progress, steps_total, epochs)
    dev = torch.device(device)
    with _threads_for(dev, int(pixels[0].numel())):
        for epoch in range(start_epoch, epochs + 1):
            torch.manual_seed(seed + epoch)  # augmentation draws, the same in a resumed run
            shuffle = torch.Generator().manual_seed(seed + epoch)
            order = torch.randperm(len(train), generator=shuffle)
            model.train()
            loss_sum, batches = 0.0, math.ceil(len(train) / batch_size)
            for number, start in enumerate(range(0, len(train), batch_size), start=1):
                if should_stop():
                    raise Stopped()
                picked = [train[i] for i in order[start : start + batch_size].tolist()]
                batch = pixels[picked]
                if params["augment"]:
                    batch = augment(batch)
                loss = model(pixel_values=batch.to(dev), labels=targets[picked].to(dev)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                loss_sum += float(loss.item())
                train_loss = loss_sum / number
                if progress.due(epoch_done=number == batches):
                    progress.report(step, epoch, train_loss)
            state = {
                "format": _CHECKPOINT_FORMAT,
                "epoch": epoch,
                "global_step": step,
                "labels": names,
                "train_loss": train_loss,
                "fingerprint": fingerprint,
            }
            _write_checkpoint(Path(checkpoint_dir), state, model, optimizer, scheduler)
            on_checkpoint(epoch)

    evaluated = validation or train
    predicted = _predict(model, pixels[evaluated], batch_size, dev)
    metrics = classification_metrics(targets[evaluated].tolist(), predicted, names)
    metrics.update(
        train_loss=train_loss,
        train_examples=len(train),
        validation_examples=len(validation),
        evaluated_on="validation" if validation else "training",
    )
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    return FinetuneResult(metrics=metrics, labels=names)


@contextlib.contextmanager
def _threads_for(device: torch.device, values_per_image: int) -> Iterator[None]:
    """One CPU thread for small pictures. Their operations are too small to split, and splitting
    them costs a wait on the other thread at every operation: on a busy 2-core host 10 steps of
    the small ResNet at 16 x 16 took 1.5 s on one thread and 34.7 s on two."""
    if device.type != "cpu" or values_per_image > SMALL_IMAGE_VALUES:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _processor(base_path: str | None, size: int) -> Any:
    if base_path is None:
        # Resize, rescale to [0, 1], normalise to [-1, 1]: nothing a small network must unlearn.
        return ViTImageProcessorPil(
            size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    try:
        return AutoImageProcessor.from_pretrained(
            base_path, backend="pil", local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(
            "invalid_base_model", f"cannot load the base model's processor: {type(exc).__name__}"
        ) from exc


def _model(base_path: str | None, names: list[str]) -> Any:
    if base_path is None:
        return small_resnet(names)
    try:
        model = AutoModelForImageClassification.from_pretrained(
            base_path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={name: i for i, name in enumerate(names)},
            ignore_mismatched_sizes=True,  # a base that is a classifier gets a new head
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(
            "invalid_base_model", f"cannot load the base model: {type(exc).__name__}"
        ) from exc
    model.config.problem_type = "single_label_classification"
    return model


def preprocess_members(
    members: Iterable[tuple[str, bytes]], processor: Any, max_pixels: int, params: dict[str, Any]
) -> tuple[list[str], torch.Tensor, Any]:
    """(paths, pixel values, the fingerprint's digest so far) of the pictures, each decoded and
    preprocessed as it comes and its encoded bytes dropped: what is held is the preprocessed
    set (at most MAX_TENSOR_BYTES) and one picture."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    paths: list[str] = []
    tensors: list[torch.Tensor] = []
    held = 0
    for name, data in members:
        digest.update(json.dumps(name).encode())
        digest.update(hashlib.sha256(data).digest())
        try:
            picture = decode(data, max_pixels)
        except ItemError as exc:
            raise TrainingError("invalid_training_data", f"{name}: {exc.message}") from None
        del data
        tensor = processor(images=[picture], return_tensors="pt")["pixel_values"][0]
        picture.close()
        held += tensor.numel() * tensor.element_size()
        if held > MAX_TENSOR_BYTES:
            raise TrainingError(
                "invalid_training_data",
                f"the images at this image_size need more than {MAX_TENSOR_BYTES} bytes in "
                "memory; lower image_size or train on fewer images",
            )
        paths.append(name)
        tensors.append(tensor)
    if not tensors:
        raise TrainingError("invalid_training_data", "the training archive holds no images")
    return paths, torch.stack(tensors), digest


def augment(batch: torch.Tensor) -> torch.Tensor:
    """Random horizontal flips and random crops (pad by an eighth, crop back), per image."""
    flipped = torch.rand(batch.shape[0]) < 0.5
    batch = batch.clone()
    batch[flipped] = batch[flipped].flip(-1)
    height, width = batch.shape[-2:]
    pad = max(1, min(height, width) // 8)
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad), mode="reflect")
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * pad + 1, (batch.shape[0], 2))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + height, dx : dx + width]
    return out


def _predict(model: Any, pixels: torch.Tensor, batch_size: int, device: torch.device) -> list[int]:
    model.eval()
    predicted: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            logits = model(pixel_values=pixels[start : start + batch_size].to(device)).logits
            predicted.extend(logits.argmax(dim=-1).tolist())
    return predicted


def classification_metrics(
    truth: list[int], predicted: list[int], names: list[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision / recall / support, and the confusion matrix (rows: the
    true class, columns: the predicted one, both in `labels` order)."""
    ids = list(range(len(names)))
    precision, recall, _, support = precision_recall_fscore_support(
        truth, predicted, labels=ids, zero_division=0
    )
    accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)
    return {
        "accuracy": float(accuracy),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(names)
        },
        "labels": names,
        "confusion_matrix": confusion_matrix(truth, predicted, labels=ids).tolist(),
    }
