"""Models as the OpenAI-compatible surface lists them (`GET /openai/v1/models`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.catalogue import BUILTIN_MODELS
from app.models import Model, Tenant, VersionStatus
from app.schemas import openai as oa
from app.services.errors import Conflict, InvalidRequest, NotFound
from app.services.models import builtin_context_length, context_length, resolve_model


def list_models(session: Session, tenant: Tenant) -> list[oa.OpenAIModel]:
    """Builtins, then each of the tenant's models that has a ready version (what `name` runs)."""
    found = [
        oa.OpenAIModel(
            id=name,
            created=0,
            owned_by="modelfarm",
            task=builtin.task,
            context_length=builtin_context_length(name),
        )
        for name, builtin in BUILTIN_MODELS.items()
    ]
    models = session.scalars(
        select(Model)
        .where(Model.tenant_id == tenant.id)
        .options(selectinload(Model.versions))
        .order_by(Model.name)
    )
    for model in models:
        ready = [v for v in model.versions if v.status == VersionStatus.READY]
        if ready:
            created = int(ready[0].created_at.timestamp())
            latest = max(ready, key=lambda v: v.version)  # what `name` alone runs
            found.append(
                oa.OpenAIModel(
                    id=model.name,
                    created=created,
                    owned_by=tenant.name,
                    task=latest.task,
                    context_length=context_length(latest.info),
                )
            )
    return found


def get_model(session: Session, tenant: Tenant, model_id: str) -> oa.OpenAIModel:
    """`name` or `name@N`, when it would serve a request now."""
    try:
        resolved = resolve_model(session, tenant, model_id)
    except (InvalidRequest, Conflict):  # a bad ref, or no version ready: nothing to use
        raise NotFound(f"no model {model_id!r}") from None
    for model in list_models(session, tenant):
        if model.id == resolved.ref.partition("@")[0]:
            return model.model_copy(update={"id": model_id})
    raise NotFound(f"no model {model_id!r}")
