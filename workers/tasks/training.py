"""Training jobs: fit a scikit-learn estimator or fine-tune a transformers classifier, then
register the result as the next version of `output_model`.

A training job holds the job's own lease (renewed by a JobWatch thread). If its worker dies the
sweeper re-dispatches it once the lease runs out, and a fine-tuning run resumes from the last
epoch checkpoint it left in the artifact store. Registering the version and marking the job
`succeeded` are one transaction, so a job can never register twice or succeed without a model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from app.config import get_settings
from app.models import File, Job, ModelVersion
from app.services import training
from app.services.jobs import add_event
from app.storage import ArtifactStore, get_store
from app.unit_of_work import session_scope
from workers import state
from workers.reliability import JobWatch, db_retry
from workers.runtime import Stopped
from workers.runtime.base import without_paths
from workers.runtime.items import read_lines
from workers.runtime.registry import builtin_path
from workers.runtime.training import TrainingError, read_examples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSetup:
    tenant_id: str
    framework: str
    output_model: str
    params: dict[str, Any]
    input_uri: str
    base_model: str | None  # "name@version" of a fine-tuning base
    base_path: str | None
    owner: str  # this attempt


@dataclass(frozen=True)
class Trained:
    task: str
    uri: str
    info: dict[str, Any]
    metrics: dict[str, Any]


def train_job(job_id: str, owner: str) -> None:
    settings = get_settings()
    setup = db_retry(_load, job_id, owner)
    device = state.current().device
    store = get_store()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    try:
        with (
            JobWatch(job_id, owner, settings.lease_seconds) as watch,
            tempfile.TemporaryDirectory(prefix="modelfarm-train-") as tmp,
        ):
            trained = _train(job_id, owner, setup, Path(tmp), store, device, watch)
            if watch.should_stop():
                raise Stopped
    except Stopped:
        if not watch.lost:
            db_retry(_stop, job_id, owner)
        return
    except TrainingError as exc:
        db_retry(_fail, job_id, owner, exc.code, exc.message)
        return
    except SoftTimeLimitExceeded:
        # Past TASK_SOFT_TIME_LIMIT: give the lease up so the sweeper dispatches the job again
        # (within MAX_ATTEMPTS); fine-tuning resumes from its last checkpoint.
        log.warning("training job %s reached the task time limit; giving it back", job_id)
        db_retry(_give_back, job_id, owner)
        return
    except Exception as exc:  # a bug or a broken library: the job says what broke
        log.exception("training job %s broke", job_id)
        message = f"{type(exc).__name__}: {without_paths(str(exc))}"
        db_retry(_fail, job_id, owner, "training_failed", message)
        return
    cpu = time.process_time() - cpu_start
    gpu = time.monotonic() - wall_start if device.startswith("cuda") else 0.0
    usage = {"cpu_seconds": round(cpu, 3), "gpu_seconds": round(gpu, 3)}
    if not db_retry(_succeed, job_id, owner, setup, trained, usage):
        log.warning("training job %s lost its lease before it finished; not registered", job_id)
        store.delete(trained.uri, recursive=True)
        # Its own checkpoints only: the attempt that holds the job now may resume from its own.
        store.delete(
            _checkpoints_uri(store, setup.tenant_id, job_id, _attempt_name(owner)), recursive=True
        )
        return
    # The version is registered: every attempt's checkpoints are spent.
    store.delete(_checkpoints_uri(store, setup.tenant_id, job_id), recursive=True)


def _train(
    job_id: str,
    owner: str,
    setup: TrainingSetup,
    tmp: Path,
    store: ArtifactStore,
    device: str,
    watch: JobWatch,
) -> Trained:
    if setup.params.get("task") == "image-classification":  # an archive of class folders
        from workers.tasks.image_training import train_images

        return train_images(job_id, owner, setup, tmp, store, device, watch)
    with store.open(setup.input_uri, "rb") as f:
        kind = "features" if setup.framework == "sklearn" else "text"
        lines = read_lines(f, max_bytes=get_settings().max_line_bytes)
        examples = read_examples((raw for _, raw, _ in lines), kind)
    if setup.framework == "sklearn":
        return _fit_sklearn(job_id, setup, examples, tmp, store)
    return _finetune(job_id, owner, setup, examples, tmp, store, device, watch)


def _load(job_id: str, owner: str) -> TrainingSetup:
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        base_path = None
        if job.framework == "transformers" and job.model is not None:
            if job.model_version_id is None:
                base_path = builtin_path((job.model or "").partition("@")[0])
            else:
                version = session.get_one(ModelVersion, job.model_version_id)
                assert version.uri is not None  # a job's base model is a ready version
                base_path = str(get_store().local_path(version.uri))
        return TrainingSetup(
            tenant_id=job.tenant_id,
            framework=job.framework or "",
            output_model=job.output_model or "",
            params=dict(job.params),
            input_uri=session.get_one(File, job.input_file_id).uri,
            base_model=job.model,
            base_path=base_path,
            owner=owner,
        )


def _model_uri(store: ArtifactStore, setup: TrainingSetup, job_id: str, *parts: str) -> str:
    # Each attempt saves under its own name: a late attempt that lost its lease removes only
    # its own files, never those of the attempt that registered the version.
    attempt = setup.owner.replace(":", "-")
    return store.uri(
        "tenants", setup.tenant_id, "models", setup.output_model, job_id, attempt, *parts
    )


def _fit_sklearn(
    job_id: str, setup: TrainingSetup, examples: Any, tmp: Path, store: ArtifactStore
) -> Trained:
    from app.training_params import SKLEARN_ESTIMATORS
    from workers.runtime.sklearn import check_skops_file
    from workers.runtime.training import save_sklearn, train_sklearn

    estimator_class, task = SKLEARN_ESTIMATORS[setup.params["estimator"]]
    result = train_sklearn(examples, setup.params, estimator_class, task)
    local = tmp / "model.skops"
    save_sklearn(result.estimator, str(local))
    info = check_skops_file(str(local))  # what an uploaded model records, from the same code
    task = str(info.pop("task"))
    uri = _model_uri(store, setup, job_id, "model.skops")
    with open(local, "rb") as f:
        store.write_file(uri, f)
    if result.warnings:
        info["warnings"] = result.warnings
    info.update(trained_by=job_id, metrics=result.metrics)
    return Trained(task, uri, info, result.metrics)


def _finetune(
    job_id: str,
    owner: str,
    setup: TrainingSetup,
    examples: Any,
    tmp: Path,
    store: ArtifactStore,
    device: str,
    watch: JobWatch,
) -> Trained:
    from workers.runtime.finetune import finetune

    assert setup.base_path is not None
    local_checkpoints = tmp / "checkpoints"
    resumed = _resume_checkpoint(store, setup.tenant_id, job_id, local_checkpoints)
    if resumed:
        db_retry(_event, job_id, "resumed_from_checkpoint", {"epoch": resumed})

    def on_checkpoint(epoch: int) -> None:
        _save_checkpoint(store, setup.tenant_id, job_id, owner, local_checkpoints, epoch)

    output = tmp / "model"
    result = finetune(
        examples,
        setup.params,
        setup.base_path,
        str(output),
        str(local_checkpoints),
        device=device,
        should_stop=watch.should_stop,
        on_progress=lambda progress: _progress(job_id, owner, progress),
        on_checkpoint=on_checkpoint,
    )
    uri = _model_uri(store, setup, job_id, "model")
    store.put_directory(output, uri)
    info = {
        "labels": result.labels,
        "base_model": setup.base_model,
        "trained_by": job_id,
        "metrics": result.metrics,
        **measured_precisions(job_id, "text-classification", output, tmp),
    }
    return Trained("text-classification", uri, info, result.metrics)


def measured_precisions(job_id: str, task: str, folder: Path, tmp: Path) -> dict[str, Any]:
    """A trained model's `precisions` and `default_precision` for its version's info, measured
    as validation measures an upload's (docs/decisions/0017): a trained version is never
    validated, and without them it would serve fp32 only. fp32 alone where measuring fails;
    the model itself is still good."""
    from workers.runtime.base import ModelSpec
    from workers.runtime.validation import ModelRefused, precisions

    spec = ModelSpec(key=f"trained/{job_id}", framework="transformers", task=task, path=str(folder))
    scratch = tmp / "precision"
    scratch.mkdir(exist_ok=True)
    try:
        return precisions(spec, scratch, "fp32")
    except SoftTimeLimitExceeded:
        raise  # the job gives its lease back, as anywhere in training
    except ModelRefused as exc:
        log.warning("training job %s: its model's precisions were not measured: %s", job_id, exc)
    except Exception:  # a broken measurement must not lose a trained model
        log.exception("training job %s: measuring its model's precisions broke", job_id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"precisions": {"fp32": {"offered": True}}, "default_precision": "fp32"}


def _checkpoints_uri(store: ArtifactStore, tenant_id: str, job_id: str, *parts: str) -> str:
    return store.uri("tenants", tenant_id, "jobs", job_id, "checkpoints", *parts)


def _attempt_name(owner: str) -> str:
    return owner.replace(":", "-")


def _save_checkpoint(
    store: ArtifactStore, tenant_id: str, job_id: str, owner: str, local: Path, epoch: int
) -> bool:
    """Upload epoch N into this attempt's own folder, then record it in the job's events, only
    while this attempt holds the job's lease. An attempt that lost it (another took the job
    over) writes into its own folder, which nobody resumes from: it can neither overwrite nor
    delete the checkpoints of the attempt that holds the job now."""
    folder = _checkpoints_uri(store, tenant_id, job_id, _attempt_name(owner))
    store.put_directory(local / f"epoch-{epoch}", f"{folder}/epoch-{epoch}")
    recorded = db_retry(_record_checkpoint, job_id, owner, epoch)
    if recorded:
        for older in range(1, epoch):
            store.delete(f"{folder}/epoch-{older}", recursive=True)
    return recorded


def _record_checkpoint(job_id: str, owner: str, epoch: int) -> bool:
    with session_scope() as session:
        return training.record_checkpoint(session, job_id, owner, epoch, _attempt_name(owner))


def _resume_checkpoint(
    store: ArtifactStore, tenant_id: str, job_id: str, local: Path
) -> int | None:
    """Copy the job's last recorded checkpoint here; its epoch, or None for a fresh start."""
    local.mkdir(parents=True, exist_ok=True)
    with session_scope() as session:
        data = training.last_checkpoint(session, job_id)
    if not data or "attempt" not in data:
        return None
    epoch = int(data["epoch"])
    folder = _checkpoints_uri(store, tenant_id, job_id, str(data["attempt"]), f"epoch-{epoch}")
    try:
        shutil.copytree(store.local_path(folder), local / f"epoch-{epoch}")
    except (FileNotFoundError, OSError):
        return None  # gone (the job's checkpoints were cleared): start afresh
    return epoch


def _progress(job_id: str, owner: str, progress: dict[str, Any]) -> None:
    try:
        with session_scope() as session:
            training.record_progress(session, job_id, owner, progress)
    except Exception:  # progress is worth a retry next second, not a stalled training run
        log.warning("could not record progress of job %s", job_id, exc_info=True)


def _event(job_id: str, type_: str, data: dict[str, Any]) -> None:
    with session_scope() as session:
        add_event(session, job_id, type_, data)


def _succeed(
    job_id: str, owner: str, setup: TrainingSetup, trained: Trained, usage: dict[str, float]
) -> bool:
    version = {
        "tenant_id": setup.tenant_id,
        "name": setup.output_model,
        "framework": "sklearn" if setup.framework == "sklearn" else "transformers",
        "task": trained.task,
        "uri": trained.uri,
        "info": trained.info,
    }
    with session_scope() as session:
        return training.succeed(session, job_id, owner, version, trained.metrics, usage)


def _give_back(job_id: str, owner: str) -> None:
    with session_scope() as session:
        training.give_back(session, job_id, owner)


def _fail(job_id: str, owner: str, code: str, message: str) -> None:
    log.warning("training job %s failed: %s: %s", job_id, code, message)
    with session_scope() as session:
        training.fail(session, job_id, owner, code, message)


def _stop(job_id: str, owner: str) -> None:
    with session_scope() as session:
        training.stop(session, job_id, owner)
