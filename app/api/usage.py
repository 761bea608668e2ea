from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import SessionDep, TenantDep
from app.api.docs import V1_ERRORS
from app.api.guards import GuardedRoute
from app.schemas.usage import UsageList, UsagePublic
from app.services import usage as usage_service

router = APIRouter(
    prefix="/v1/usage", tags=["usage"], route_class=GuardedRoute, responses=V1_ERRORS
)


@router.get("", summary="Usage of the caller's tenant")
def get_usage(
    session: SessionDep,
    tenant: TenantDep,
    start: Annotated[
        date | None, Query(alias="from", description="First day (UTC), e.g. 2026-11-01.")
    ] = None,
    end: Annotated[date | None, Query(alias="to", description="Last day (UTC), inclusive.")] = None,
    group_by: Annotated[
        str, Query(description="day, model, job_type, or a comma-separated combination.")
    ] = "day",
) -> UsageList:
    """The caller's jobs summed by day, model and/or job type (`group_by=day,model`), from
    `from` to `to` inclusive (UTC dates; default the last 30 days)."""
    groups = usage_service.parse_group_by(group_by)
    first, last = usage_service.date_range(start, end)
    rows = usage_service.usage(session, tenant, first, last, groups)
    return UsageList(
        data=[
            UsagePublic(
                date=r.date,
                model=r.model,
                job_type=r.job_type,
                jobs=r.jobs,
                items=r.items,
                failed_items=r.failed_items,
                tokens=r.tokens,
                completion_tokens=r.completion_tokens,
                cpu_seconds=r.cpu_seconds,
                gpu_seconds=r.gpu_seconds,
            )
            for r in rows
        ]
    )
