"""The image-classification branch of a training job: read the archive, train, store.

Leases, checkpoint upload and resume, progress and registering the version are the training
task's (workers/tasks/training.py); only the data and the trainer differ from text fine-tuning.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from app.config import get_settings
from app.storage import ArtifactStore
from workers.reliability import JobWatch, db_retry
from workers.runtime.image_archive import training_members
from workers.tasks import training


def train_images(
    job_id: str,
    owner: str,
    setup: training.TrainingSetup,
    tmp: Path,
    store: ArtifactStore,
    device: str,
    watch: JobWatch,
) -> training.Trained:
    from workers.runtime.image_training import train_image_classifier

    settings = get_settings()
    archive = tmp / "input"
    with store.open(setup.input_uri, "rb") as source, open(archive, "wb") as target:
        shutil.copyfileobj(source, target, 1024 * 1024)
    # Read one picture at a time while training preprocesses them (docs/decisions/0013).
    members = training_members(
        archive,
        settings.model_max_unpacked_bytes,
        settings.model_max_archive_members,
        settings.max_image_bytes,
    )
    checkpoints = tmp / "checkpoints"
    resumed = training._resume_checkpoint(store, setup.tenant_id, job_id, checkpoints)
    if resumed:
        db_retry(training._event, job_id, "resumed_from_checkpoint", {"epoch": resumed})

    def on_checkpoint(epoch: int) -> None:
        training._save_checkpoint(store, setup.tenant_id, job_id, owner, checkpoints, epoch)

    output = tmp / "model"
    result = train_image_classifier(
        members,
        setup.params,
        setup.base_path,
        str(output),
        str(checkpoints),
        settings.max_image_pixels,
        device=device,
        should_stop=watch.should_stop,
        on_progress=lambda progress: training._progress(job_id, owner, progress),
        on_checkpoint=on_checkpoint,
    )
    archive.unlink()
    uri = training._model_uri(store, setup, job_id, "model")
    store.put_directory(output, uri)
    info = {
        "labels": result.labels,
        "base_model": setup.base_model,
        "trained_by": job_id,
        "metrics": result.metrics,
        **training.measured_precisions(job_id, "image-classification", output, tmp),
    }
    return training.Trained("image-classification", uri, info, result.metrics)
