"""Validating an uploaded model version: claim it, check and store it, probe it, record it.

The checks are the runtime's (workers/runtime/validation.py); this task moves bytes between
the artifact store and a scratch folder and records the verdict through app/services. Each
attempt stores under a folder of its own, so a late attempt that lost the version removes only
its own files; a refused upload leaves nothing in the store (its `error` is all it needs).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from app.config import get_settings
from app.services import validation
from app.services.validation import ValidationClaim
from app.storage import ArtifactStore, get_store
from app.unit_of_work import session_scope
from workers.reliability import db_retry, owner_is_dead, worker_is_gone, worker_owner
from workers.runtime.base import ModelSpec, without_paths
from workers.runtime.bounds import ModelLimits
from workers.runtime.sklearn_bounds import WidthLimits
from workers.runtime.validation import (
    ModelRefused,
    check_gguf_upload,
    check_sklearn,
    check_transformers,
    memory_limit,
    precisions,
    probe,
    unpack_archive,
)

log = logging.getLogger(__name__)


def validate_version(version_id: str) -> None:
    settings = get_settings()
    owner = worker_owner()
    claim = db_retry(
        _claim, version_id, owner, settings.model_validation_seconds, settings.max_attempts
    )
    if claim is None:
        return  # done already, or another live attempt holds it
    store = get_store()
    # Earlier attempts are dead (their leases ran out or their processes are gone): what a
    # killed one stored is removed, so a version leaves only its winner's files behind.
    for attempt in range(1, claim.attempt):
        _remove(store, _attempt_folder(store, claim, attempt))
    if claim.ended:
        return
    folder = _attempt_folder(store, claim, claim.attempt)
    try:
        with memory_limit(settings.model_validation_memory_bytes):
            task, uri, info = _check_and_store(claim, folder, store)
    except ModelRefused as exc:
        _remove(store, folder)
        db_retry(_fail, version_id, exc.code, without_paths(exc.message))
        log.info("model version %s refused: %s", version_id, exc)
        return
    except SoftTimeLimitExceeded:
        # Past MODEL_VALIDATION_SECONDS: not tried again, another try would only take as long
        # (a hostile config kept a worker busy for minutes, three times over).
        _remove(store, folder)
        log.warning("validating model version %s ran out of time; refused", version_id)
        message = f"validating the model took over {settings.model_validation_seconds}s"
        db_retry(_fail, version_id, "validation_timeout", message)
        return
    except BaseException:
        _remove(store, folder)  # a crash (or a stop) leaves no half-stored version behind
        raise
    if not db_retry(_finish, version_id, task, uri, info):
        log.warning("model version %s left validating meanwhile; not recorded", version_id)
        _remove(store, folder)


def _check_and_store(
    claim: ValidationClaim, folder: str, store: ArtifactStore
) -> tuple[str, str, dict[str, Any]]:
    settings = get_settings()
    assert claim.upload_uri is not None  # a claim that is not `ended` has its upload
    upload = store.local_path(claim.upload_uri)
    if claim.framework == "sklearn":
        widths = WidthLimits(
            settings.model_max_features, settings.model_max_outputs, settings.model_max_estimators
        )
        task, info = check_sklearn(upload, claim.task, settings.model_max_unpacked_bytes, widths)
        uri = f"{folder}/model.skops"
        info["stored_bytes"] = upload.stat().st_size  # its copy counts against the quota
        with open(upload, "rb") as f:
            store.write_file(uri, f)
    else:
        task, uri = claim.task or "feature-extraction", folder
        scratch = settings.data_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix="model-") as tmp:
            if claim.framework == "gguf":  # stored converted: jobs load it in seconds
                root = Path(tmp) / "model"
                info = check_gguf_upload(upload, root, settings.model_max_unpacked_bytes)
            else:
                root, info = unpack_archive(
                    upload,
                    Path(tmp),
                    settings.model_max_unpacked_bytes,
                    settings.model_max_archive_members,
                )
            limits = ModelLimits(settings.model_max_parameters, settings.model_max_bytes)
            info.update(check_transformers(root, task, limits))  # before anything is built
            # The unpacked copy is what the tenant stores: counted against its quota.
            info["stored_bytes"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
            if uri.startswith("file:"):
                shutil.copytree(root, store.local_path(uri), dirs_exist_ok=True)
            else:
                store.put_directory(root, uri)
    # The probe loads what jobs will load: the stored copy, on torch and the CPU, uncached.
    spec = ModelSpec(
        key=f"validate/{claim.version_id}",
        framework=claim.framework,
        task=task,
        path=str(store.local_path(uri)),
    )
    probe(spec, info)
    (settings.data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.data_dir / "tmp", prefix="precision-") as tmp:
        info.update(precisions(spec, Path(tmp), claim.default_precision))
    return task, uri, info


def _attempt_folder(store: ArtifactStore, claim: ValidationClaim, attempt: int) -> str:
    # Named for the version and the attempt: each claim counts one, so two attempts never
    # write into one folder.
    folder = f"v{claim.version}-attempt{attempt}"
    return store.uri("tenants", claim.tenant_id, "models", claim.name, folder)


def _remove(store: ArtifactStore, folder: str) -> None:
    try:
        store.delete(folder, recursive=True)
        # The name's folder too, when this attempt made it and nothing else is in it.
        store.remove_empty_folder(folder.rsplit("/", 1)[0])
    except OSError:
        log.warning("could not remove %s", folder, exc_info=True)


def _claim(
    version_id: str, owner: str, lease_seconds: float, max_attempts: int
) -> ValidationClaim | None:
    with session_scope() as session:
        # A pool child killed mid-validation (the OOM killer, say) gives its message back at
        # once: the next child takes the dead one's lease instead of waiting for it to lapse.
        # One killed by the hard time limit has its message acknowledged: the sweeper sends it
        # again once the lease ran out, and the dead owner is still named on the version.
        holder = validation.lease_owner(session, version_id)
        dead = holder if owner_is_dead(holder) else None
        claim = validation.claim_validation(
            session, version_id, owner, lease_seconds, max_attempts, take_over=dead
        )
        if claim is not None and dead is not None and not claim.ended:
            if worker_is_gone(dead):
                # Its whole worker stopped (restarted by an operator, a deploy): nothing says
                # the upload did it, so it is validated again, MAX_ATTEMPTS times at most.
                log.warning(
                    "model version %s: the worker of attempt %d stopped mid-validation; "
                    "validating it again",
                    version_id,
                    claim.attempt - 1,
                )
                return claim
            # A validation that killed its process under a living worker (out of memory, most
            # often) is not tried again: the same upload would kill the next one too.
            message = "the validation's worker process died (most often: out of memory)"
            validation.fail_validation(session, version_id, "validation_killed", message)
            return replace(claim, ended=True)
        return claim


def _finish(version_id: str, task: str, uri: str, info: dict[str, Any]) -> bool:
    with session_scope() as session:
        return validation.finish_validation(session, version_id, task, uri, info)


def _fail(version_id: str, code: str, message: str) -> bool:
    with session_scope() as session:
        return validation.fail_validation(session, version_id, code, message)
