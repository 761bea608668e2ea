from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SessionDep, TenantDep
from app.api.guards import GuardedRoute
from app.schemas.models import ModelCreate, ModelList, ModelPublic, ModelVersionPublic
from app.services import models as model_service

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=GuardedRoute)


@router.post("", status_code=201)
def register_model(body: ModelCreate, session: SessionDep, tenant: TenantDep) -> ModelVersionPublic:
    version = model_service.register_model(session, tenant, body)
    return model_service.version_public(body.name, version)


@router.get("")
def list_models(session: SessionDep, tenant: TenantDep) -> ModelList:
    return ModelList(data=model_service.list_models(session, tenant))


@router.get("/{name}")
def get_model(name: str, session: SessionDep, tenant: TenantDep) -> ModelPublic:
    return model_service.get_model(session, tenant, name)
