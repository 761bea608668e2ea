"""Model registration and lookup: builtin models plus each tenant's numbered versions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, selectinload

from app.broker.dispatch import TASK_VALIDATE_MODEL, VALIDATION_QUEUE
from app.catalogue import BUILTIN_MODELS
from app.db import database_clock, utcnow
from app.ids import new_id
from app.models import FilePurpose, Job, Model, ModelVersion, Tenant, VersionStatus
from app.models.job import TERMINAL_STATUSES
from app.schemas.models import ErrorBody, ModelCreate, ModelPublic, ModelVersionPublic
from app.services.errors import Conflict, InvalidRequest, NotFound
from app.services.files import get_file
from app.services.validation import undispatch
from app.unit_of_work import Message, send_after_commit

# Builtin models (app/catalogue.py) ship with the farm, their weights in Python packages, so
# every tenant can use them and none may register a model of the same name.

TASKS_BY_FRAMEWORK = {
    "sklearn": {"classification", "regression"},
    "transformers": {
        "text-classification",
        "feature-extraction",
        "image-classification",
        "image-feature-extraction",
        "text-ranking",
        "token-classification",
        "zero-shot-classification",
        "text-generation",
        "automatic-speech-recognition",  # Whisper (docs/tasks.md)
        "text2text-generation",
    },
    "sentence-transformers": {"feature-extraction"},
    "gguf": {"text-generation"},  # one .gguf file (docs/generation.md)
}


class ModelNotReady(Conflict):
    code = "model_not_ready"


class ModelFailed(InvalidRequest):
    code = "model_failed"


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # "name@version"
    framework: str
    task: str
    version_id: str | None  # None for a builtin model
    precisions: tuple[str, ...] = ("fp32",)  #: what a job may choose
    default_precision: str = "fp32"  #: what a job that chooses none runs at


def parse_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition("@")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidRequest(f"bad model version in {ref!r}: use name or name@N")
    return name, int(version)


def resolve_model(session: Session, tenant: Tenant, ref: str) -> ResolvedModel:
    """The version a job names; only a ready version serves. `name` alone is its latest ready
    version; while none is ready the answer says why (still validating, or failed)."""
    name, version = parse_ref(ref)
    if name in BUILTIN_MODELS:
        if version not in (None, BUILTIN_MODELS[name].version):
            raise NotFound(f"no model {ref!r}: builtin {name!r} has one version")
        builtin = BUILTIN_MODELS[name]
        return ResolvedModel(
            builtin.ref(name), builtin.framework, builtin.task, None, builtin.offered()
        )
    query = (
        select(ModelVersion)
        .join(Model)
        .where(
            Model.tenant_id == tenant.id,
            Model.name == name,
            ModelVersion.status != VersionStatus.DELETED,
        )
        .order_by(ModelVersion.version.desc())
    )
    if version is not None:
        found = session.scalars(query.where(ModelVersion.version == version).limit(1)).first()
    else:
        ready = query.where(ModelVersion.status == VersionStatus.READY)
        found = session.scalars(ready.limit(1)).first()
        if found is None:  # nothing ready: the newest version says why
            found = session.scalars(query.limit(1)).first()
    if found is None:
        raise NotFound(f"no model {ref!r}")
    found_ref = f"{name}@{found.version}"
    if found.status == VersionStatus.VALIDATING:
        raise ModelNotReady(
            f"model {found_ref} is still being validated; submit the job once it is ready "
            f"(GET /v1/models/{name} shows its status)"
        )
    if found.status == VersionStatus.FAILED:
        reason = (found.error or {}).get("message", "validation failed")
        raise ModelFailed(f"model {found_ref} failed validation and cannot serve jobs: {reason}")
    assert found.task is not None  # a ready version always knows its task
    measured = (found.info or {}).get("precisions") or {}
    offered = tuple(p for p, m in measured.items() if m.get("offered")) or ("fp32",)
    default = (found.info or {}).get("default_precision", "fp32")
    return ResolvedModel(found_ref, found.framework, found.task, found.id, offered, default)


class PrecisionNotOffered(InvalidRequest):
    code = "precision_not_offered"


def with_precision(resolved: ResolvedModel, params: dict[str, Any]) -> dict[str, Any]:
    """The job's params with the precision it runs at: its own choice, which the model must
    offer, or the version's default (written into the params, so the job records it)."""
    chosen = params.get("precision")
    if chosen is None:
        if resolved.default_precision == "fp32":
            return params
        return {**params, "precision": resolved.default_precision}
    if chosen not in resolved.precisions:
        raise PrecisionNotOffered(
            f"model {resolved.ref} does not offer precision {chosen!r} (offered: "
            f"{', '.join(resolved.precisions)}; GET /v1/models shows each one's fidelity)"
        )
    return params


def register_model(
    session: Session, tenant: Tenant, body: ModelCreate, max_versions: int = 100
) -> ModelVersion:
    """A new version, `validating`: only what is cheap is checked here. Reading, unpacking and
    probing the upload is a worker's (workers/tasks/validation.py), so a hostile file costs the
    API nothing; the route commits, then publishes the validation."""
    if body.name in BUILTIN_MODELS:
        raise InvalidRequest(f"{body.name!r} is a builtin model name")
    file = get_file(session, tenant, body.file_id)
    if file.purpose != FilePurpose.MODEL:
        raise InvalidRequest(f"file {file.id} was uploaded for {file.purpose!r}, not 'model'")
    task = body.task
    if body.framework == "gguf":
        task = task or "text-generation"
    elif body.framework != "sklearn":
        task = task or "feature-extraction"
    if task is not None and task not in TASKS_BY_FRAMEWORK[body.framework]:
        raise InvalidRequest(f"framework {body.framework!r} does not serve task {task!r}")
    model, version = _next_version(session, tenant.id, body.name)
    kept = session.scalar(
        select(func.count())
        .select_from(ModelVersion)
        .where(ModelVersion.model_id == model.id, ModelVersion.status != VersionStatus.DELETED)
    )
    if (kept or 0) >= max_versions:
        raise Conflict(
            f"model {body.name!r} keeps {kept} versions; the limit is {max_versions} "
            "(MAX_MODEL_VERSIONS): delete old ones first",
            code="too_many_versions",
        )
    mv = ModelVersion(
        model_id=model.id,
        version=version,
        framework=body.framework,
        task=task,  # a scikit-learn task left out is read from the estimator
        file_id=file.id,
        uri=None,
        # read by the validation, which replaces the info with what it measured
        info={"default_precision": body.precision},
        status=VersionStatus.VALIDATING,
        attempts=0,
        dispatched_at=database_clock(),  # taken back when the broker refuses the message
    )
    session.add(mv)
    session.flush()
    send_after_commit(
        session,
        Message(
            TASK_VALIDATE_MODEL,
            [mv.id],
            VALIDATION_QUEUE,
            refused=lambda later: undispatch(later, mv.id),
        ),
    )
    return mv


def _next_version(session: Session, tenant_id: str, name: str) -> tuple[Model, int]:
    """The model of that name (made if new), locked, and its next version number."""
    # Two jobs may make the same new model at once: insert-if-absent, then lock the one row.
    session.execute(
        insert(Model)
        .values(id=new_id("mdl"), tenant_id=tenant_id, name=name, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=[Model.tenant_id, Model.name])
    )
    model = session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.name == name).with_for_update()
    ).one()
    latest = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    return model, (latest or 0) + 1


def add_trained_version(
    session: Session,
    tenant_id: str,
    name: str,
    framework: str,
    task: str,
    uri: str,
    info: dict[str, Any],
) -> ModelVersion:
    """Register what a training job saved at `uri` as the next version of `name`: ready at
    once, since the job loaded it back through the same trusted loader when it saved it."""
    model, version = _next_version(session, tenant_id, name)
    mv = ModelVersion(
        model_id=model.id,
        version=version,
        framework=framework,
        task=task,
        uri=uri,
        info=info,
        status=VersionStatus.READY,
    )
    session.add(mv)
    session.flush()
    return mv


def version_public(name: str, mv: ModelVersion) -> ModelVersionPublic:
    return ModelVersionPublic(
        id=mv.id,
        model=f"{name}@{mv.version}",
        name=name,
        version=mv.version,
        framework=mv.framework,
        task=mv.task,
        file_id=mv.file_id,
        info=mv.info,
        status=mv.status,
        error=ErrorBody(**mv.error) if mv.error else None,
        created_at=mv.created_at,
    )


def context_length(info: dict[str, Any] | None) -> int | None:
    """A version's context length, as its validation recorded it in `info`."""
    value = (info or {}).get("context_length")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def builtin_context_length(name: str) -> int | None:
    return BUILTIN_MODELS[name].context_length


def _builtin_public(name: str) -> ModelPublic:
    builtin = BUILTIN_MODELS[name]
    version = ModelVersionPublic(
        id=f"builtin_{name}",
        model=builtin.ref(name),
        name=name,
        version=builtin.version,
        framework=builtin.framework,
        task=builtin.task,
        file_id=None,
        info={"precisions": builtin.precision_info()},
        status=VersionStatus.READY,
        error=None,
        created_at=None,
    )
    return ModelPublic(
        name=name,
        builtin=True,
        latest_version=builtin.version,
        versions=[version],
        task=builtin.task,
        context_length=builtin_context_length(name),
    )


def _model_public(model: Model) -> ModelPublic:
    kept = [v for v in model.versions if v.status != VersionStatus.DELETED]
    versions = [version_public(model.name, v) for v in kept]
    ready = [v for v in versions if v.status == VersionStatus.READY]
    latest = ready[-1] if ready else None
    return ModelPublic(
        name=model.name,
        builtin=False,
        latest_version=latest.version if latest else 0,  # what `name` alone runs (0: none)
        versions=versions,
        task=latest.task if latest else None,
        context_length=context_length(latest.info) if latest else None,
    )


def list_models(session: Session, tenant: Tenant) -> list[ModelPublic]:
    models = session.scalars(
        select(Model)
        .where(Model.tenant_id == tenant.id)
        .options(selectinload(Model.versions))
        .order_by(Model.name)
    )
    return [_builtin_public(n) for n in sorted(BUILTIN_MODELS)] + [_model_public(m) for m in models]


def get_model(session: Session, tenant: Tenant, name: str) -> ModelPublic:
    if name in BUILTIN_MODELS:
        return _builtin_public(name)
    model = session.scalar(
        select(Model)
        .where(Model.tenant_id == tenant.id, Model.name == name)
        .options(selectinload(Model.versions))
    )
    if model is None:
        raise NotFound(f"no model {name!r}")
    return _model_public(model)


def delete_version(session: Session, tenant: Tenant, name: str, version: int) -> str | None:
    """A version of the tenant's model deleted: it serves no job and no longer counts against
    MAX_MODEL_VERSIONS or the storage quota. Returns the folder of what it stored (None:
    nothing), for the caller to remove once this has committed. Refused (409) while it is
    validating or a job that has not ended runs it. Its row stays, marked deleted, so finished
    jobs keep naming it and its number is never given to another version."""
    mv = session.scalar(
        select(ModelVersion)
        .join(Model)
        .where(
            Model.tenant_id == tenant.id,
            Model.name == name,
            ModelVersion.version == version,
            ModelVersion.status != VersionStatus.DELETED,
        )
        .with_for_update(of=ModelVersion)
    )
    if mv is None:
        raise NotFound(f"no model {name}@{version}")
    if mv.status == VersionStatus.VALIDATING:
        raise Conflict(
            f"model {name}@{version} is being validated; delete it once it is ready or failed",
            code="model_in_use",
        )
    running = session.scalar(
        select(Job.id)
        .where(Job.model_version_id == mv.id, Job.status.not_in(list(TERMINAL_STATUSES)))
        .limit(1)
    )
    if running is not None:
        raise Conflict(
            f"model {name}@{version} runs job {running}, which has not ended", code="model_in_use"
        )
    stored = mv.uri
    mv.status, mv.uri = VersionStatus.DELETED, None
    if stored is None:
        return None
    # A scikit-learn version is one file in a folder of its own (its attempt's); others are
    # that folder.
    return stored.rsplit("/", 1)[0] if stored.endswith(".skops") else stored
