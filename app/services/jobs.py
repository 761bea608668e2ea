"""The job lifecycle. Every status change goes through `transition`, a conditional UPDATE."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.broker.dispatch import TASK_PLAN_JOB
from app.catalogue import BUILTIN_MODELS
from app.config import get_settings
from app.counters import JOBS_PUBLISH_FAILED, JOBS_SUBMITTED
from app.db import Base, database_clock, utcnow
from app.ids import new_id
from app.models import File, FilePurpose, Job, JobEvent, JobStatus, Tenant
from app.schemas.jobs import JobCounts, JobCreate, JobError, JobPublic
from app.services import heartbeats, webhooks
from app.services.batches import batch_event
from app.services.errors import Conflict, InvalidRequest, NotFound
from app.services.files import create_items_file, get_file
from app.services.models import resolve_model, with_precision
from app.services.pace import pace
from app.services.tenants import check_job_quota, check_storage, metadata_bytes, tenant_cap
from app.storage import get_store
from app.unit_of_work import Message, send_after_commit
from app.urlguard import Allowlist, RefusedURL, check_url

TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
JOB_ENDED_CHANNEL = "modelfarm_job_ended"  #: NOTIFY channel; the payload is the job id
#: a job's usage before its first shard records any (tokens: read; completion_tokens: written)
EMPTY_USAGE = {"cpu_seconds": 0.0, "gpu_seconds": 0.0, "tokens": 0, "completion_tokens": 0}

NO_GPU_WORKER = (
    "no GPU worker is running: the job waits in the gpu queue until one starts "
    "(`modelfarm worker --pool gpu`)"
)


def pick_queue(session: Session, device: str) -> tuple[str, str | None]:
    """The queue for a device, and a notice when nothing serves that queue now.

    `auto` goes to the GPU pool while a GPU worker beats, and to the CPU pool otherwise.
    """
    if device == "cpu":
        return "cpu", None
    gpu_alive = heartbeats.pool_alive(session, "gpu")
    if device == "gpu":
        return "gpu", None if gpu_alive else NO_GPU_WORKER
    return ("gpu" if gpu_alive else "cpu"), None


def create_job(
    session: Session,
    tenant: Tenant,
    body: JobCreate,
    idempotency_key: str | None = None,
    max_inline_items: int = 1000,
    lines: list[dict[str, Any]] | None = None,
) -> tuple[Job, bool]:
    """Returns (job, created). A repeated idempotency key returns the first job unchanged.

    `lines`: the inline input's lines as they are to be written, when they are not native items
    (an OpenAI request, app/services/openai.py); `body.input.items` then only counts them.
    """
    if idempotency_key:
        existing = find_by_idempotency_key(session, tenant, idempotency_key)
        if existing is not None:
            return existing, False
    check_job_quota(session, tenant)  # a repeated key above answers its job, quota or not
    if body.metadata:  # stored with the job, so counted as stored (issue 25, part 3)
        check_storage(session, tenant, metadata_bytes(body.metadata), "this job's metadata")
    if body.webhook is not None:
        allowlist = Allowlist.parse(get_settings().webhook_allowed_hosts)
        try:
            check_url(str(body.webhook.url), allowlist)
        except RefusedURL as exc:
            raise InvalidRequest(str(exc), code="webhook_url_refused") from None
    if body.type == "training":
        model_ref, version_id, params = _training_model(session, tenant, body)
        input_file = get_file(session, tenant, body.input.file_id or "")
        if input_file.purpose != FilePurpose.TRAINING:
            raise InvalidRequest(f"file {input_file.id} is not a training file")
        if input_file.bytes == 0:
            raise InvalidRequest("the training file is empty", code="invalid_training_data")
    else:
        assert body.model is not None  # JobCreate guarantees it for inference
        resolved = resolve_model(session, tenant, body.model)
        params = with_precision(resolved, body.params)
        model_ref, version_id = resolved.ref, resolved.version_id
        input_file = _inference_input(session, tenant, body, max_inline_items, lines)
    device = body.device
    if body.type != "training" and params.get("precision") == "int8":
        # int8 is ONNX Runtime's CPU kernels (docs/decisions/0017): never the GPU pool.
        if device == "gpu":
            raise InvalidRequest(
                "precision int8 runs on the CPU pool only; use device cpu or auto",
                code="precision_not_offered",
            )
        device = "cpu"
    queue, notice = pick_queue(session, device)
    job = Job(
        id=new_id("job"),
        tenant_id=tenant.id,
        type=body.type,
        status=JobStatus.QUEUED,
        model=model_ref,
        model_version_id=version_id,
        framework=body.framework,
        output_model=body.output_model,
        device=device,
        queue=queue,
        priority=body.priority,
        notice=notice,
        input_file_id=input_file.id,
        params=params,
        webhook=body.webhook.model_dump(mode="json") if body.webhook else None,
        meta=body.metadata,
        idempotency_key=idempotency_key,
        usage={},
        # Set here rather than left to column defaults, so the job is whole before any flush:
        # a submission may be written by another session (app/api/submissions.py).
        counts_total=0,
        counts_succeeded=0,
        counts_failed=0,
        attempts=0,
        created_at=(now := database_clock()),
        deadline_at=now + timedelta(seconds=body.deadline_seconds)
        if body.deadline_seconds
        else None,
    )
    if idempotency_key:
        try:
            with session.begin_nested():
                session.add(job)
                session.flush()
        except IntegrityError:
            # Two requests with one key raced; the other one's job is the answer.
            existing = find_by_idempotency_key(session, tenant, idempotency_key)
            if existing is None:
                raise
            return existing, False
    else:
        session.add(job)  # written with its events in one flush, at the commit
    queued = {"queue": job.queue, "model": job.model, "priority": job.priority}
    add_event(session, job.id, "queued", queued, flush=False)
    if notice:
        add_event(session, job.id, "waiting_for_gpu_worker", {"notice": notice}, flush=False)
    return job, True


def submit_job(
    session: Session,
    tenant: Tenant,
    body: JobCreate,
    idempotency_key: str | None = None,
    max_inline_items: int = 1000,
) -> Job:
    """A submission whole: the job, its input and its events in one transaction, then the
    message (sent once the unit of work commits). A repeated idempotency key answers with the
    first job and sends nothing."""
    job, created = create_job(session, tenant, body, idempotency_key, max_inline_items)
    if created:
        dispatch(session, job)
    return job


@dataclass(frozen=True)
class Submission:
    """A new job's rows, built but not written: whoever commits them may write many at once."""

    job: Job
    rows: list[tuple[type[Base], dict[str, Any]]]  # in the order they must be inserted


def prepare_submission(
    session: Session,
    tenant: Tenant,
    body: JobCreate,
    max_inline_items: int = 1000,
    lines: list[dict[str, Any]] | None = None,
) -> Submission:
    """What `submit_job` writes for a job without an idempotency key (the job, its inline
    input's file, its queued and dispatched events), taken out of `session` unwritten.

    Everything is checked here first, as for any submission; only the writing is left.
    """
    job, _ = create_job(session, tenant, body, None, max_inline_items, lines)
    job.dispatched_at = database_clock()  # compared by the sweeper, maybe on another host
    add_event(session, job.id, "dispatched", {"queue": job.queue}, flush=False)
    # Parents first (the file before the job that names it), then in the order added.
    new = sorted(session.new, key=lambda obj: (_INSERT_ORDER[type(obj)], inspect(obj).insert_order))
    rows = [(type(obj), _column_values(obj)) for obj in new]
    session.expunge_all()
    return Submission(job, rows)


_INSERT_ORDER = {File: 0, Job: 1, JobEvent: 2}


def _column_values(obj: Base) -> dict[str, Any]:
    """The columns set on a new ORM object, by column name (as a Core INSERT takes them)."""
    return {
        column: obj.__dict__[attr] for attr, column in _columns(type(obj)) if attr in obj.__dict__
    }


@lru_cache
def _columns(cls: type[Base]) -> tuple[tuple[str, str], ...]:
    """(attribute, column name) of each column attribute of an ORM class."""
    return tuple((attr.key, attr.columns[0].key) for attr in inspect(cls).column_attrs)


def submission_rows(submissions: Sequence[Submission]) -> list[tuple[Table, list[dict[str, Any]]]]:
    """The rows of several submissions by table, parents first (as `one_statement` takes them)."""
    return [
        (cast(Table, cls.__table__), [row for s in submissions for c, row in s.rows if c is cls])
        for cls in sorted(_INSERT_ORDER, key=_INSERT_ORDER.__getitem__)
    ]


def insert_submissions(session: Session | Connection, submissions: Sequence[Submission]) -> None:
    """Write the rows of several submissions: one multi-row INSERT per table and shape of row.

    Core statements on the table, not the ORM's bulk insert: the rows are whole already, and
    the ORM's per-row bookkeeping cost more than the statement.
    """
    for cls in sorted(_INSERT_ORDER, key=_INSERT_ORDER.__getitem__):
        by_shape: dict[frozenset[str], list[dict[str, Any]]] = {}
        for submission in submissions:
            for row_cls, row in submission.rows:
                if row_cls is cls:
                    by_shape.setdefault(frozenset(row), []).append(row)
        for rows in by_shape.values():
            session.execute(insert(cast(Table, cls.__table__)), rows)


def unpublished(session: Session, jobs: Sequence[Job]) -> None:
    """Jobs committed as dispatched whose message the broker refused: the mark is taken back,
    and the sweeper sends them."""
    ids = [job.id for job in jobs]
    session.execute(update(Job).where(Job.id.in_(ids)).values(dispatched_at=None))
    for job in jobs:
        add_event(session, job.id, "publish_failed", {"queue": job.queue}, flush=False)
    JOBS_PUBLISH_FAILED.inc(len(jobs))


def send_plan(session: Session, job_id: str, queue: str, priority: str) -> None:
    """Queue the job's plan message on the unit of work: sent once this commits."""
    send_after_commit(session, Message(TASK_PLAN_JOB, [job_id], queue, priority))


def dispatch(session: Session, job: Job) -> None:
    """Mark a new job dispatched and queue its plan message, sent once the unit of work
    commits: a message never names a job that is not in PostgreSQL."""
    job.dispatched_at = database_clock()  # compared by the sweeper, maybe on another host
    add_event(session, job.id, "dispatched", {"queue": job.queue}, flush=False)
    send_after_commit(session, plan_message(job))


def plan_message(job: Job) -> Message:
    """A new job's plan message. When the broker refuses it the dispatch mark is taken back (a
    second transaction, only then) and the sweeper sends it; if the process dies between the
    two, the sweeper's broker scan finds the message missing all the same."""
    labels = (job.type, job.queue)
    return Message(
        TASK_PLAN_JOB,
        [job.id],
        job.queue,
        job.priority,  # the plan message's priority follows from it (app/dispatch.py)
        refused=lambda later: unpublished(later, [job]),
        committed=lambda: JOBS_SUBMITTED.labels(*labels).inc(),
    )


def _inference_input(
    session: Session,
    tenant: Tenant,
    body: JobCreate,
    max_inline_items: int,
    lines: list[dict[str, Any]] | None = None,
) -> File:
    if body.input.items is not None:
        if len(body.input.items) > max_inline_items:
            raise InvalidRequest(
                f"{len(body.input.items)} inline items; at most {max_inline_items} "
                "(upload a JSONL file for larger jobs)",
                code="too_many_items",
            )
        items = lines if lines is not None else (item.model_dump() for item in body.input.items)
        return create_items_file(session, tenant, items)
    assert body.input.file_id is not None
    input_file = get_file(session, tenant, body.input.file_id)
    if input_file.purpose != FilePurpose.BATCH:
        raise InvalidRequest(f"file {input_file.id} is not a batch input file")
    return input_file


def _training_model(
    session: Session, tenant: Tenant, body: JobCreate
) -> tuple[str | None, str | None, dict[str, Any]]:
    """(base model ref, its version id, normalised params); what can be known now is checked."""
    # Imported on call: scikit-learn costs a second; the API imports it in the background
    # after startup (app/api/main.py), and a request that comes first waits for that import.
    from app.training_params import check_finetune_params, check_sklearn_params

    assert body.output_model is not None
    if body.output_model in BUILTIN_MODELS:
        raise InvalidRequest(
            f"{body.output_model!r} is a builtin model name", code="invalid_params"
        )
    if body.framework == "sklearn":
        return None, None, check_sklearn_params(body.params)
    if body.task == "image-classification":
        return _image_training_model(session, tenant, body)
    params = check_finetune_params(body.params)
    base = resolve_model(session, tenant, params["base_model"])
    if base.framework not in ("transformers", "sentence-transformers"):
        raise InvalidRequest(
            f"base model {base.ref} is a {base.framework} model; fine-tuning needs a "
            "transformers model (or minilm)",
            code="invalid_params",
        )
    return base.ref, base.version_id, params


def _image_training_model(
    session: Session, tenant: Tenant, body: JobCreate
) -> tuple[str | None, str | None, dict[str, Any]]:
    from app.image_training_params import check_image_params

    params = check_image_params(body.params)
    if params["base_model"] is None:
        return None, None, params
    base = resolve_model(session, tenant, params["base_model"])
    if base.framework != "transformers" or not base.task.startswith("image-"):
        raise InvalidRequest(
            f"base model {base.ref} is a {base.framework} {base.task} model; an image "
            "classifier fine-tunes a transformers image model",
            code="invalid_params",
        )
    return base.ref, base.version_id, params


def find_by_idempotency_key(session: Session, tenant: Tenant, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))


def add_event(
    session: Session,
    job_id: str,
    type_: str,
    data: dict[str, Any] | None = None,
    flush: bool = True,
) -> None:
    """Record an event; `flush=False` leaves the INSERT to the session's next flush (events keep
    the order they were added in either way)."""
    session.add(JobEvent(job_id=job_id, type=type_, data=data or {}, created_at=utcnow()))
    if flush:
        session.flush()


def transition(
    session: Session,
    job_id: str,
    expected: Iterable[JobStatus],
    to: JobStatus,
    event_data: dict[str, Any] | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    notify_webhook: bool = True,
    flush_event: bool = True,
    **values: Any,
) -> bool:
    """Move a job to `to` only if its status is one of `expected`; False if it was not.

    Because the check and the write are one UPDATE, a duplicated or late task can neither run a
    job twice nor move it backwards.
    """
    moved = transition_job(
        session, job_id, expected, to, event_data, where, notify_webhook, flush_event, **values
    )
    return moved is not None


def transition_job(
    session: Session,
    job_id: str,
    expected: Iterable[JobStatus],
    to: JobStatus,
    event_data: dict[str, Any] | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    notify_webhook: bool = True,
    flush_event: bool = True,
    **values: Any,
) -> Job | None:
    """`transition`, answering the job as the UPDATE left it (RETURNING: no second read).
    `flush_event=False` leaves its event to the session's next flush, with the rows that
    follow it in the same transaction (one INSERT for all of them)."""
    ends = to in TERMINAL_STATUSES
    returned: list[Any] = [Job]
    if ends:
        values.setdefault("finished_at", utcnow())
        # An ending job answers its tenant's running cap too: one of that tenant's held jobs
        # may start once this commits (app/services/admission.py). Nothing to do without a cap.
        returned.append(tenant_cap())
        # The end's NOTIFY rides on the UPDATE, sent only if it moved the job, and delivered
        # when this transaction commits: `Prefer: wait` wakes then (app/api/waits.py).
        returned.append(func.pg_notify(JOB_ENDED_CHANNEL, job_id))
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([s.value for s in expected]), *where)
        .values(status=to.value, **values)
        .returning(*returned)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).first()
    if row is None:
        return None
    job: Job = row[0]
    add_event(session, job_id, to.value, event_data, flush=flush_event)
    if ends and row[1] is not None:
        from app.services.admission import release_after_commit  # it imports this module

        release_after_commit(session, job.tenant_id)
    event_type = webhooks.EVENT_BY_STATUS.get(to.value)
    if notify_webhook and event_type and webhooks.wants(job.webhook, event_type):
        # The outbox row commits with the transition: no finished job without its callback.
        notify(session, job, event_type)
    return job


def notify(session: Session, job: Job, event_type: str) -> None:
    if job.params.get("format") == "openai" and "completion_window" in job.params:
        # An OpenAI batch sends OpenAI's events (batch.completed ...), not the job's.
        found = batch_event(job, event_type)
        if found is not None:
            webhooks.enqueue(session, job, found[0], {}, event=found[1])
        return
    webhooks.enqueue(session, job, event_type, job_public(job).model_dump(mode="json"))


def notify_progress(session: Session, job_id: str) -> None:
    """Queue a `job.progress` webhook if the job wants one and none went out this second."""
    job = webhooks.progress_due(session, job_id)
    if job is not None:
        notify(session, job, "job.progress")


def get_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job


def delete_job(session: Session, tenant: Tenant, job_id: str) -> str:
    """Remove a finished job: its row, events, shards, deliveries and result files' rows. Returns
    the folder of its files in the store, for the caller to remove once this has committed (a
    failed removal leaves unreachable bytes, never a job pointing at missing files). The input
    file stays: the tenant uploaded it, and other jobs may read it."""
    get_job(session, tenant, job_id)  # 404 for anyone else's
    # Read under the lock: a job that ended just now is seen with its result files.
    job = session.scalars(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one()
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(
            f"job {job.id} is {job.status}; cancel it and wait for it to end before deleting it",
            code="job_not_finished",
        )
    if unstarted_retry_of(session, job.id) is not None:
        raise Conflict(
            f"a retry of job {job.id} has yet to read its files", code="job_not_finished"
        )
    return _remove_finished(session, job)


def unstarted_retry_of(session: Session, job_id: str) -> str | None:
    """A retry of `job_id` that has not ended and not yet made its input from this job's
    input and error files (its planner reads them)."""
    return session.scalar(
        select(Job.id)
        .where(
            Job.retry_of == job_id,
            Job.input_file_id.is_(None),
            Job.status.not_in([s.value for s in TERMINAL_STATUSES]),
        )
        .limit(1)
    )


def expire_results(session: Session, ttl_days: float, limit: int) -> list[str]:
    """Remove jobs that ended more than `ttl_days` ago, as `delete_job` does (RESULT_TTL_DAYS);
    returns their folders in the store, for the caller to remove once this has committed."""
    cutoff = utcnow() - timedelta(days=ttl_days)
    jobs = session.scalars(
        select(Job)
        .where(Job.status.in_([s.value for s in TERMINAL_STATUSES]), Job.finished_at < cutoff)
        .order_by(Job.finished_at)
        .limit(limit)
        .with_for_update(key_share=True, skip_locked=True)
    ).all()
    return [_remove_finished(session, job) for job in jobs]


def _remove_finished(session: Session, job: Job) -> str:
    results = [f for f in (job.output_file_id, job.error_file_id) if f]
    session.delete(job)  # events, shards and deliveries go with it; retries keep their own
    session.flush()
    if results:
        session.execute(delete(File).where(File.id.in_(results), File.tenant_id == job.tenant_id))
    return get_store().uri("tenants", job.tenant_id, "jobs", job.id)


def list_jobs(
    session: Session,
    tenant: Tenant,
    *,
    status: str | None = None,
    type_: str | None = None,
    limit: int = 20,
    after: str | None = None,
) -> tuple[list[Job], bool]:
    """Newest first. Ids are time-ordered, so `after` is a plain id comparison."""
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status:
        query = query.where(Job.status == status)
    if type_:
        query = query.where(Job.type == type_)
    if after:
        get_job(session, tenant, after)  # an unknown cursor is a 404, not an empty page
        query = query.where(Job.id < after)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_events(
    session: Session, job_id: str, *, limit: int = 20, after: int | None = None
) -> tuple[list[JobEvent], bool]:
    """A job's events oldest first, `limit` at a time after the event id `after`."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        if (
            session.scalar(
                select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.id == after)
            )
            is None
        ):
            raise NotFound(f"no event {after} in job {job_id}")
        query = query.where(JobEvent.id > after)
    rows = list(session.scalars(query.order_by(JobEvent.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _progress(job: Job) -> dict[str, Any] | None:
    """A training job's own progress, and while any job runs its rate and ETA."""
    moving = pace(job)
    if moving is None:
        return job.progress
    return {**(job.progress or {}), **moving}


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        id=job.id,
        type=job.type,
        status=job.status,
        model=job.model,
        framework=job.framework,
        output_model=job.output_model,
        device=job.device,
        queue=job.queue,
        priority=job.priority,
        counts=JobCounts(
            total=job.counts_total, succeeded=job.counts_succeeded, failed=job.counts_failed
        ),
        input_file_id=job.input_file_id,
        output_file_id=job.output_file_id,
        error_file_id=job.error_file_id,
        result=job.result,
        error=JobError(**job.error) if job.error else None,
        attempts=job.attempts,
        retry_of=job.retry_of,
        deadline_at=job.deadline_at,
        params=job.params,
        webhook=job.webhook,
        metadata=job.meta,
        usage={**EMPTY_USAGE, **(job.usage or {})},
        progress=_progress(job),
        notice=job.notice,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
