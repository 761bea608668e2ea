"""Model registration and lookup: builtin models plus each tenant's numbered versions."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, selectinload

from app.archives import ArchiveRefused, extract_archive
from app.catalogue import BUILTIN_MODELS
from app.config import get_settings
from app.db import utcnow
from app.ids import new_id
from app.models import FilePurpose, Model, ModelVersion, Tenant
from app.schemas.models import ModelCreate, ModelPublic, ModelVersionPublic
from app.services.errors import InvalidRequest, NotFound
from app.services.files import get_file
from app.storage import get_store

# Builtin models (app/catalogue.py) ship with the farm, their weights in Python
# packages, so every tenant can use them and none may register a model of the same name.

TASKS_BY_FRAMEWORK = {
    "sklearn": {"classification", "regression"},
    "transformers": {"text-classification", "feature-extraction"},
    "sentence-transformers": {"feature-extraction"},
}


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # "name@version"
    framework: str
    task: str
    version_id: str | None  # None for a builtin model


def parse_ref(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition("@")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidRequest(f"bad model version in {ref!r}: use name or name@N")
    return name, int(version)


def resolve_model(session: Session, tenant: Tenant, ref: str) -> ResolvedModel:
    name, version = parse_ref(ref)
    if name in BUILTIN_MODELS:
        if version not in (None, BUILTIN_MODELS[name].version):
            raise NotFound(f"no model {ref!r}: builtin {name!r} has one version")
        builtin = BUILTIN_MODELS[name]
        return ResolvedModel(f"{name}@{builtin.version}", builtin.framework, builtin.task, None)
    query = (
        select(ModelVersion)
        .join(Model)
        .where(Model.tenant_id == tenant.id, Model.name == name)
        .order_by(ModelVersion.version.desc())
    )
    if version is not None:
        query = query.where(ModelVersion.version == version)
    found = session.scalars(query.limit(1)).first()
    if found is None:
        raise NotFound(f"no model {ref!r}")
    return ResolvedModel(f"{name}@{found.version}", found.framework, found.task, found.id)


def register_model(session: Session, tenant: Tenant, body: ModelCreate) -> ModelVersion:
    if body.name in BUILTIN_MODELS:
        raise InvalidRequest(f"{body.name!r} is a builtin model name")
    file = get_file(session, tenant, body.file_id)
    if file.purpose != FilePurpose.MODEL:
        raise InvalidRequest(f"file {file.id} was uploaded for {file.purpose!r}, not 'model'")
    # Every read, check and copy happens before the model's row is locked (and under a folder
    # named for this upload, not for a version number it does not have yet): registering a
    # large archive never holds up another registration of the same name.
    store = get_store()
    folder = store.uri("tenants", tenant.id, "models", body.name, new_id("upload"))
    target = folder
    try:
        source = store.local_path(file.uri)
        if body.framework == "sklearn":
            task, info = _check_sklearn(source, body.task)
            target += "/model.skops"
            with open(source, "rb") as f:
                store.write_file(target, f)
        else:
            task = body.task or "feature-extraction"
            if task not in TASKS_BY_FRAMEWORK[body.framework]:
                raise InvalidRequest(f"framework {body.framework!r} does not serve task {task!r}")
            info = _unpack_model_archive(source, target)
    except BaseException:
        store.delete(folder, recursive=True)
        store.remove_empty_folder(folder.rsplit("/", 1)[0])  # a name that has no version yet
        raise
    model, version = _next_version(session, tenant.id, body.name)
    mv = ModelVersion(
        model_id=model.id,
        version=version,
        framework=body.framework,
        task=task,
        file_id=file.id,
        uri=target,
        info=info,
    )
    session.add(mv)
    session.flush()
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
    """Register what a training job saved at `uri` as the next version of `name`."""
    model, version = _next_version(session, tenant_id, name)
    mv = ModelVersion(
        model_id=model.id, version=version, framework=framework, task=task, uri=uri, info=info
    )
    session.add(mv)
    session.flush()
    return mv


def _check_sklearn(path: Path, task: str | None) -> tuple[str, dict[str, object]]:
    # The runtime owns the allowlist of types a skops file may hold; the API asks it up front
    # so that a bad artifact is refused at registration, not when a job first runs.
    from workers.runtime.base import ModelLoadError
    from workers.runtime.sklearn import check_skops_file

    try:
        info = check_skops_file(str(path), get_settings().model_max_unpacked_bytes)
    except ModelLoadError as exc:
        raise InvalidRequest(
            f"not a usable scikit-learn model: {exc}", code="untrusted_model"
        ) from exc
    if task is not None and task != info["task"]:
        raise InvalidRequest(f"the estimator does {info['task']}, not {task}")
    return str(info["task"]), {k: v for k, v in info.items() if k != "task"}


# Weights are loaded from safetensors only and no code is ever imported from a model, so files
# that could only be pickles or code have no use here; refusing them keeps the stored version
# plain data that anyone can audit.
_REFUSED_SUFFIXES = (".py", ".pyc", ".so", ".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")


def _unpack_model_archive(archive: Path, target_uri: str) -> dict[str, object]:
    """Unpack a .tar(.gz) or .zip of config + safetensors + tokenizer into the store."""
    settings = get_settings()
    store = get_store()
    scratch = settings.data_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="model-") as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        try:
            files = extract_archive(
                archive,
                root,
                settings.model_max_unpacked_bytes,
                settings.model_max_archive_members,
            )
        except ArchiveRefused as exc:
            raise InvalidRequest(str(exc), code="invalid_archive") from None
        # An archive of one top-level folder is common (tar -czf m.tgz my-model/).
        tops = {name.split("/", 1)[0] for name in files}
        if len(tops) == 1 and all("/" in name for name in files):
            top = tops.pop()
            root = root / top
            files = [name.split("/", 1)[1] for name in files]
        names = {name.rsplit("/", 1)[-1] for name in files}
        refused = sorted(n for n in names if n.lower().endswith(_REFUSED_SUFFIXES))
        if refused:
            raise InvalidRequest(
                f"the model archive holds code or pickled files ({', '.join(refused[:5])}); "
                "only safetensors weights and JSON/text configs are accepted",
                code="invalid_archive",
            )
        if "config.json" not in names:
            raise InvalidRequest("the model archive has no config.json", code="invalid_archive")
        if not any(n.endswith(".safetensors") for n in names):
            raise InvalidRequest(
                "the model archive has no .safetensors weights", code="invalid_archive"
            )
        try:
            if target_uri.startswith("file:"):
                shutil.copytree(root, store.local_path(target_uri), dirs_exist_ok=True)
            else:
                store.put_directory(root, target_uri)
        except BaseException:
            store.delete(target_uri, recursive=True)  # no half-copied version left behind
            raise
        return {"files": sorted(files)}


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
        created_at=mv.created_at,
    )


def _builtin_public(name: str) -> ModelPublic:
    builtin = BUILTIN_MODELS[name]
    version = ModelVersionPublic(
        id=f"builtin_{name}",
        model=f"{name}@{builtin.version}",
        name=name,
        version=builtin.version,
        framework=builtin.framework,
        task=builtin.task,
        file_id=None,
        info={},
        created_at=None,
    )
    return ModelPublic(name=name, builtin=True, latest_version=builtin.version, versions=[version])


def _model_public(model: Model) -> ModelPublic:
    versions = [version_public(model.name, v) for v in model.versions]
    return ModelPublic(
        name=model.name,
        builtin=False,
        latest_version=versions[-1].version if versions else 0,
        versions=versions,
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
