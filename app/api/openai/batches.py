"""/openai/v1/batches: a batch is a farm job whose lines are OpenAI requests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.openai.errors import OpenAIRoute
from app.api.submissions import group_commit
from app.schemas.openai import BatchCreate, OpenAIBatch, OpenAIBatchList
from app.services import control
from app.services import openai as service
from app.unit_of_work import commit, run_retrying

router = APIRouter(prefix="/batches", route_class=OpenAIRoute)


@router.post("", summary="Create a batch")
def create_batch(
    body: BatchCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> OpenAIBatch:
    """A batch of OpenAI requests (`/v1/embeddings` or `/v1/predictions` lines) from an uploaded
    file, run as a farm job: the same shards, scheduler, cancel, deadline and webhooks."""
    submission = service.prepare_batch(session, tenant, body, settings.max_inline_items)
    if session.in_transaction():
        commit(session)  # only read: its connection goes back before the group commit
    group_commit.submit(submission)  # committed, then published, as a native job is
    return service.batch_public(submission.job)


@router.get("", summary="List batches")
def list_batches(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> OpenAIBatchList:
    """The tenant's batches, newest first, `limit` at a time after the batch id `after`."""
    jobs, has_more = service.list_batches(session, tenant, limit=limit, after=after)
    return OpenAIBatchList(
        data=[service.batch_public(j) for j in jobs],
        first_id=jobs[0].id if jobs else None,
        last_id=jobs[-1].id if jobs else None,
        has_more=has_more,
    )


@router.get("/{batch_id}", summary="Retrieve a batch")
def get_batch(batch_id: str, session: SessionDep, tenant: TenantDep) -> OpenAIBatch:
    """A batch, its status mapped from its job's, with its request counts and files."""
    return service.batch_public(service.get_batch(session, tenant, batch_id))


@router.post("/{batch_id}/cancel", summary="Cancel a batch")
def cancel_batch(batch_id: str, tenant: TenantDep) -> OpenAIBatch:
    """Stop a batch: `cancelling` until its workers stop, then `cancelled` with what was done."""

    def cancel(session: Session) -> OpenAIBatch:
        service.get_batch(session, tenant, batch_id)  # 404 for a native job
        job, _ = control.request_cancel(session, tenant, batch_id)  # sends what it must
        return service.batch_public(job)

    # As the native cancel: its own unit of work, run again if it loses a lock race.
    return run_retrying(cancel)
