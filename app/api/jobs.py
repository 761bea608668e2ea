from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from starlette.concurrency import run_in_threadpool

from app.api import waits
from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.docs import V1_ERRORS, errors
from app.api.guards import GuardedRoute
from app.api.submissions import group_commit
from app.db import read_scope
from app.models import Delivery, Job, JobStatus, Tenant
from app.schemas.jobs import JobCreate, JobEventList, JobEventPublic, JobList, JobPublic
from app.schemas.webhooks import DeliveryAttemptPublic, DeliveryList, DeliveryPublic
from app.services import control, files, webhooks
from app.services import jobs as job_service
from app.unit_of_work import commit, run_retrying

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=GuardedRoute, responses=V1_ERRORS)

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


@router.post("", status_code=202, summary="Submit a job", responses=errors(404, 409, 413))
async def create_job(
    body: JobCreate,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Any string: the same key again answers the same job, not a new one.",
            examples=["nightly-embeddings-2026-12-01"],
        ),
    ] = None,
) -> JobPublic:
    """Queue a batch inference job (over an uploaded file or inline items) or a training
    job. The answer is 202 with the job `queued`; poll `GET /v1/jobs/{job_id}` (with
    `Prefer: wait=N` to be told as soon as it ends) or give a `webhook`. 404: the input file
    or model is not this tenant's; 409: the model version is still validating."""
    if idempotency_key:  # its own transaction: the unique index decides a race of one key
        job = await run_in_threadpool(
            job_service.submit_job,
            session,
            tenant,
            body,
            idempotency_key,
            max_inline_items=settings.max_inline_items,
        )
        return job_service.job_public(job)
    # Checked, written with whatever arrived with it, and published by the committer thread
    # (app/api/submissions.py); this request waits on its event loop meanwhile.
    submission = await group_commit.submit_async(
        lambda reads: job_service.prepare_submission(reads, tenant, body, settings.max_inline_items)
    )
    return job_service.job_public(submission.job)


@router.get("", summary="List jobs")
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    type: Annotated[str | None, Query(pattern="^(inference|training)$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> JobList:
    """The tenant's jobs, newest first, a page at a time: pass the page's `last_id` as
    `after` for the next one while `has_more` is true."""
    jobs, has_more = job_service.list_jobs(
        session, tenant, status=status, type_=type, limit=limit, after=after
    )
    return JobList(
        data=[job_service.job_public(j) for j in jobs],
        has_more=has_more,
        last_id=jobs[-1].id if jobs else None,
    )


def _load(tenant: Tenant, job_id: str) -> Job:
    with read_scope() as session:
        return job_service.get_job(session, tenant, job_id)


@router.get("/{job_id}", summary="Get a job", responses=errors(404))
async def get_job(
    job_id: str,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    prefer: Annotated[str | None, Header()] = None,
) -> JobPublic:
    """A job: status, item counts, result files, error. With `Prefer: wait=N`, the answer is
    held up to N seconds until the job has finished (the header `Preference-Applied` says
    how long the farm agreed to wait)."""
    match = _PREFER_WAIT.search(prefer or "")
    if not match:
        return job_service.job_public(await run_in_threadpool(_load, tenant, job_id))
    wait = min(float(match.group(1)), settings.max_wait_seconds)
    response.headers["Preference-Applied"] = f"wait={wait:g}"
    deadline = time.monotonic() + wait
    async with waits.job_end(job_id) as ended:
        job = await run_in_threadpool(_load, tenant, job_id)
        while not job.is_terminal and time.monotonic() < deadline:
            await waits.until(ended, deadline)
            job = await run_in_threadpool(_load, tenant, job_id)
    return job_service.job_public(job)


@router.delete(
    "/{job_id}", status_code=204, summary="Delete a finished job", responses=errors(404, 409)
)
def delete_job(job_id: str, tenant: TenantDep) -> Response:
    """A finished job and its result files; 409 while it runs (cancel it first)."""
    folder = run_retrying(lambda session: job_service.delete_job(session, tenant, job_id))
    files.remove_folder(folder)
    return Response(status_code=204)


@router.post("/{job_id}/cancel", summary="Cancel a job", responses=errors(404, 409))
def cancel_job(job_id: str, tenant: TenantDep) -> JobPublic:
    """A queued job ends `cancelled` at once; a running one answers `cancelling` and stops
    between micro-batches (about a second), keeping the results of the items it finished."""
    # Its own unit of work, run again if it loses a lock race with a worker on the same job.
    # With no worker on any of its shards, its assembly's message goes once it commits.
    job, _ = run_retrying(lambda session: control.request_cancel(session, tenant, job_id))
    return job_service.job_public(job)


@router.post(
    "/{job_id}/retry",
    status_code=202,
    summary="Retry the failed items",
    responses=errors(404, 409),
)
def retry_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """A new job over just the items in this job's error file (409 when there are none)."""
    job = control.create_retry(session, tenant, job_id)
    job_service.dispatch(session, job)  # its plan message goes once the request's work commits
    return job_service.job_public(job)


@router.get("/{job_id}/events", summary="List a job's events", responses=errors(404))
def list_events(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> JobEventList:
    """Oldest first, a page at a time: `after` is the last event id of the page before."""
    job = job_service.get_job(session, tenant, job_id)
    events, has_more = job_service.list_events(session, job.id, limit=limit, after=after)
    return JobEventList(
        data=[JobEventPublic.model_validate(e, from_attributes=True) for e in events],
        has_more=has_more,
        last_id=events[-1].id if events else None,
    )


@router.get(
    "/{job_id}/deliveries", summary="List a job's webhook deliveries", responses=errors(404)
)
def list_deliveries(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> DeliveryList:
    """Oldest first, a page at a time: `after` is the last delivery id of the page before."""
    job = job_service.get_job(session, tenant, job_id)
    deliveries, has_more = webhooks.list_for_job(session, job.id, limit=limit, after=after)
    return DeliveryList(
        data=[_delivery(d) for d in deliveries],
        has_more=has_more,
        last_id=deliveries[-1].id if deliveries else None,
    )


@router.post(
    "/{job_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Send a webhook delivery again",
    responses=errors(404, 409),
)
def redeliver(
    job_id: str, delivery_id: str, session: SessionDep, tenant: TenantDep
) -> DeliveryPublic:
    """One more attempt now, with the same `webhook-id`; published once this commits."""
    job = job_service.get_job(session, tenant, job_id)
    delivery = webhooks.redeliver(session, job.id, delivery_id)
    commit(session)
    return _delivery(delivery)


def _delivery(delivery: Delivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=delivery.id,
        job_id=delivery.job_id,
        event=delivery.event,
        url=delivery.url,
        webhook_id=delivery.webhook_id,
        status=delivery.status,
        attempts=[
            DeliveryAttemptPublic.model_validate(a, from_attributes=True) for a in delivery.attempts
        ],
        next_attempt_at=delivery.next_attempt_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
    )
