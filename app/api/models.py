from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import SessionDep, TenantDep
from app.api.docs import V1_ERRORS, errors
from app.api.guards import GuardedRoute
from app.config import get_settings
from app.schemas.models import ModelCreate, ModelList, ModelPublic, ModelVersionPublic
from app.services import models as model_service
from app.services.files import remove_folder
from app.unit_of_work import commit, run_retrying

router = APIRouter(
    prefix="/v1/models", tags=["models"], route_class=GuardedRoute, responses=V1_ERRORS
)


@router.post("", status_code=202, summary="Register a model version", responses=errors(404, 409))
def register_model(body: ModelCreate, session: SessionDep, tenant: TenantDep) -> ModelVersionPublic:
    """The version answers `validating`; a worker checks and probes the upload and moves it to
    `ready` or `failed` (GET /v1/models/{name} shows which)."""
    max_versions = get_settings().max_model_versions
    version = model_service.register_model(session, tenant, body, max_versions)
    public = model_service.version_public(body.name, version)
    # Committed, then its validation's message sent (queued by the service), as for jobs: a
    # message never names a version that is not in PostgreSQL, and one the broker refused is
    # published by the sweeper.
    commit(session)
    return public


@router.get("", summary="List models")
def list_models(session: SessionDep, tenant: TenantDep) -> ModelList:
    """Every model the tenant can name in a job, builtin ones included, with its versions."""
    return ModelList(data=model_service.list_models(session, tenant))


@router.get("/{name}", summary="Get a model", responses=errors(404))
def get_model(name: str, session: SessionDep, tenant: TenantDep) -> ModelPublic:
    """A model with every version: `status` (validating, ready, failed) and, for a failed
    one, why. `latest_version` is what a job naming the model alone runs."""
    return model_service.get_model(session, tenant, name)


@router.delete(
    "/{name}/versions/{version}",
    status_code=204,
    summary="Delete a model version",
    responses=errors(404, 409),
)
def delete_version(name: str, version: int, tenant: TenantDep) -> Response:
    """The version and its stored files: it serves no job after this, and no longer counts
    against the model's MAX_MODEL_VERSIONS or the tenant's storage. 409 `model_in_use` while
    it is validating or a job that has not ended runs it. Its number is not given again."""
    folder = run_retrying(
        lambda session: model_service.delete_version(session, tenant, name, version)
    )
    if folder is not None:
        remove_folder(folder)
    return Response(status_code=204)
