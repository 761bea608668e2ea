"""The OpenAI-compatible surface's domain: a batch is a job, a file is a file, a synchronous
embeddings request is a job of one line. Nothing is stored apart: a batch is a job whose
params say `format: openai` and carry its endpoint and completion window."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import File, FilePurpose, Job, JobStatus, Tenant
from app.schemas import openai as oa
from app.schemas.jobs import InlineItem, JobCreate, JobInput, WebhookEvent, WebhookSpec
from app.services import jobs as job_service
from app.services.batches import batch_status
from app.services.errors import NotFound, ServiceError
from app.services.files import get_file
from app.services.models import resolve_model
from app.storage import get_store


class BadRequest(ServiceError):
    """A request OpenAI answers 400 (the client's BadRequestError), where /v1 says 422."""

    status_code = 400
    code = "invalid_request"


#: completion_window -> the job's deadline; past it the batch ends `expired`
COMPLETION_WINDOWS = {"24h": 24 * 3600}
#: a batch's webhook events, as the job's events that send them
JOB_EVENTS: dict[str, WebhookEvent] = {
    "batch.completed": "job.succeeded",
    "batch.failed": "job.failed",
    "batch.cancelled": "job.cancelled",
    "batch.expired": "job.cancelled",  # a passed deadline ends the job cancelled
}
#: the farm's file purposes as OpenAI names them (FileObject.purpose)
PURPOSES_OUT = {
    FilePurpose.BATCH: "batch",
    FilePurpose.BATCH_OUTPUT: "batch_output",
    FilePurpose.BATCH_ERROR: "batch_output",
    FilePurpose.TRAINING: "fine-tune",
    FilePurpose.MODEL: "user_data",
}
PURPOSES_IN = {"batch": FilePurpose.BATCH, "fine-tune": FilePurpose.TRAINING}
_SYNC_ID = "sync"  #: the custom_id of a synchronous request's one line
#: how far into an input file the API looks for the first request's model (bytes)
_MODEL_PROBE_BYTES = 1024 * 1024


def unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def file_public(file: File) -> oa.OpenAIFile:
    return oa.OpenAIFile(
        id=file.id,
        bytes=file.bytes,
        created_at=int(file.created_at.timestamp()),
        filename=file.filename,
        purpose=PURPOSES_OUT.get(FilePurpose(file.purpose), str(file.purpose)),
    )


def list_files(
    session: Session,
    tenant: Tenant,
    *,
    purpose: str | None,
    limit: int,
    after: str | None,
    newest_first: bool = True,
) -> tuple[list[File], bool]:
    """Newest (or oldest) first; ids are time-ordered, so `after` is an id comparison."""
    query = select(File).where(File.tenant_id == tenant.id)
    if purpose is not None:
        wanted = [p for p, name in PURPOSES_OUT.items() if name == purpose]
        query = query.where(File.purpose.in_([p.value for p in wanted]))
    if after:
        get_file(session, tenant, after)  # an unknown cursor is a 404, not an empty page
        query = query.where(File.id < after if newest_first else File.id > after)
    order = File.id.desc() if newest_first else File.id.asc()
    rows = list(session.scalars(query.order_by(order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


# -- batches ----------------------------------------------------------------------------------


def is_batch(job: Job) -> bool:
    return job.params.get("format") == "openai" and "completion_window" in job.params


def batch_public(job: Job) -> oa.OpenAIBatch:
    status = batch_status(job)
    ended = unix(job.finished_at)
    used = job.usage or {}  # summed over its shards as they close
    read, wrote = int(used.get("tokens", 0)), int(used.get("completion_tokens", 0))
    errors = None
    if status == "failed" and job.error:
        item = oa.BatchErrorItem(code=job.error.get("code"), message=job.error.get("message"))
        errors = oa.BatchErrors(data=[item])
    return oa.OpenAIBatch(
        id=job.id,
        endpoint=str(job.params.get("endpoint")),
        model=job.model,
        errors=errors,
        input_file_id=job.input_file_id,
        completion_window=str(job.params.get("completion_window")),
        status=status,
        output_file_id=job.output_file_id,
        error_file_id=job.error_file_id,
        created_at=int(job.created_at.timestamp()),
        in_progress_at=unix(job.started_at),
        expires_at=unix(job.deadline_at),
        finalizing_at=unix(job.assembling_at),
        completed_at=ended if status == "completed" else None,
        failed_at=ended if status == "failed" else None,
        expired_at=ended if status == "expired" else None,
        cancelling_at=unix(job.cancel_requested_at),
        cancelled_at=ended if status == "cancelled" else None,
        request_counts=oa.RequestCounts(
            total=job.counts_total, completed=job.counts_succeeded, failed=job.counts_failed
        ),
        usage=oa.BatchUsage(input_tokens=read, output_tokens=wrote, total_tokens=read + wrote),
        metadata=job.meta or None,
    )


def get_batch(session: Session, tenant: Tenant, batch_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == batch_id, Job.tenant_id == tenant.id))
    if job is None or not is_batch(job):
        raise NotFound(f"no batch {batch_id!r}")
    return job


def list_batches(
    session: Session, tenant: Tenant, *, limit: int, after: str | None
) -> tuple[list[Job], bool]:
    """Newest first, batches only (a native job, or a synchronous embeddings request, is not)."""
    query = select(Job).where(
        Job.tenant_id == tenant.id,
        Job.params["format"].as_string() == "openai",
        Job.params["completion_window"].as_string().is_not(None),
    )
    if after:
        get_batch(session, tenant, after)
        query = query.where(Job.id < after)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _first_model(uri: str) -> str:
    """The model the input file's first request names: a batch runs one model, and OpenAI's
    batch create does not name it."""
    with get_store().open(uri, "rb") as f:
        for _ in range(1000):
            raw = f.readline(_MODEL_PROBE_BYTES)
            if not raw:
                break
            if not raw.strip():
                continue
            try:
                model = orjson.loads(raw).get("body", {}).get("model")
            except (ValueError, AttributeError):
                continue
            if isinstance(model, str) and model:
                return model
    raise BadRequest("no request in the input file names `body.model`", code="invalid_file")


def _webhook(webhook: oa.BatchWebhook | None) -> WebhookSpec | None:
    if webhook is None:
        return None
    events = sorted({JOB_EVENTS[e] for e in webhook.events})
    return WebhookSpec(url=webhook.url, events=events)


#: which model tasks answer an endpoint (/v1/predictions: any model)
ENDPOINT_TASKS = {
    "/v1/embeddings": ("feature-extraction",),
    "/v1/rerank": ("text-ranking", "feature-extraction"),  # a cross-encoder, or cosine
    "/v1/chat/completions": ("text-generation",),
    "/v1/completions": ("text-generation",),
    "/v1/audio/transcriptions": ("automatic-speech-recognition",),
}


def _check_endpoint(session: Session, tenant: Tenant, model: str, endpoint: str) -> None:
    """Embeddings come from embedding models only, reranks from cross-encoders or embedding
    models, completions from generation models; any model's answers are predictions."""
    task = resolve_model(session, tenant, model).task
    wanted = ENDPOINT_TASKS.get(endpoint, (task,))
    if task not in wanted:
        raise BadRequest(
            f"model {model!r} ({task}) does not answer {endpoint}; it is not a "
            f"{' or '.join(wanted)} model (any model answers /v1/predictions)",
            code="model_not_supported",
        )


def prepare_batch(
    session: Session, tenant: Tenant, body: oa.BatchCreate, max_inline_items: int
) -> job_service.Submission:
    input_file = get_file(session, tenant, body.input_file_id)
    if input_file.purpose != FilePurpose.BATCH:
        raise BadRequest(f"file {input_file.id} does not have purpose `batch`")
    model = _first_model(input_file.uri)
    _check_endpoint(session, tenant, model, body.endpoint)
    create = JobCreate(
        model=model,
        input=JobInput(file_id=input_file.id),
        params={
            "format": "openai",
            "endpoint": body.endpoint,
            "completion_window": body.completion_window,
        },
        webhook=_webhook(body.webhook),
        metadata=body.metadata or {},
        # The window, or a shorter deadline of the farm's own (at most the window: checked).
        deadline_seconds=body.deadline_seconds or COMPLETION_WINDOWS[body.completion_window],
    )
    return job_service.prepare_submission(session, tenant, create, max_inline_items)


# -- synchronous embeddings -------------------------------------------------------------------


def prepare_sync(
    session: Session, tenant: Tenant, model: str, endpoint: str, body: dict[str, Any]
) -> job_service.Submission:
    """A job of one request line in the batch format: the workers answer it as they answer a
    batch's line (micro-batched, tokens counted by the model's tokenizer)."""
    _check_endpoint(session, tenant, model, endpoint)
    create = JobCreate(
        model=model,
        input=JobInput(items=[InlineItem(custom_id=_SYNC_ID, input=None)]),
        params={"format": "openai", "endpoint": endpoint},
    )
    line = {"custom_id": _SYNC_ID, "method": "POST", "url": endpoint, "body": body}
    return job_service.prepare_submission(session, tenant, create, lines=[line])


def prepare_generation(
    session: Session, tenant: Tenant, endpoint: str, body: dict[str, Any], stream: bool
) -> job_service.Submission:
    """A chat or completion request as a job of one request line, as embeddings are; with
    `stream`, its worker publishes the text as it decodes (app/streams.py)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` is required", code="invalid_request")
    _check_endpoint(session, tenant, model, endpoint)
    params: dict[str, Any] = {"format": "openai", "endpoint": endpoint}
    if stream:
        params["stream"] = True
    create = JobCreate(
        model=model,
        input=JobInput(items=[InlineItem(custom_id=_SYNC_ID, input=None)]),
        params=params,
    )
    line = {"custom_id": _SYNC_ID, "method": "POST", "url": endpoint, "body": body}
    return job_service.prepare_submission(session, tenant, create, lines=[line])


def sync_answer(session: Session, tenant: Tenant, job: Job) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a finished one-request job: its line's response."""
    if job.status == JobStatus.SUCCEEDED:
        for file_id in (job.output_file_id, job.error_file_id):
            if file_id is None:
                continue
            with get_store().open(get_file(session, tenant, file_id).uri, "rb") as f:
                raw = f.readline()
            if raw.strip():
                response = orjson.loads(raw)["response"]
                return int(response["status_code"]), response["body"]
    message = (job.error or {}).get("message") or f"the request's job ended {job.status}"
    return 500, {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
