"""Running one batch inference job: stream the input in chunks, write results as they come.

Every write to PostgreSQL is a short transaction of its own, so the counts advance while the
job runs and a cancel request is seen between chunks.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import update

from app.config import get_settings
from app.db import session_scope, utcnow
from app.models import File, FilePurpose, Job, JobStatus, ModelVersion
from app.services.files import register_file
from app.services.jobs import record_progress, transition
from app.storage import ArtifactStore, get_store
from workers import state
from workers.runtime import ModelLoadError, ModelSpec, RunOptions, builtin_spec
from workers.runtime.items import count_items, iter_chunks, iter_lines, run_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobPlan:
    """What a worker needs from the job row, read once when it starts the job."""

    job_id: str
    tenant_id: str
    input_uri: str
    spec: ModelSpec
    options: RunOptions


class ResultWriter:
    """A result file in the store, hashed while written so registering it reads nothing."""

    def __init__(self, store: ArtifactStore, uri: str) -> None:
        self.uri = uri
        self.lines = 0
        self.size = 0
        self._digest = hashlib.sha256()
        self._file: IO[Any] = store.open(uri, "wb")

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        data = "".join(lines).encode()
        self._digest.update(data)
        self._file.write(data)
        self.size += len(data)
        self.lines += len(lines)

    def close(self) -> None:
        self._file.close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def run_inference_job(job_id: str, worker: str) -> None:
    plan = _start(job_id, worker)
    if plan is None:
        return
    try:
        _run(plan)
    except Exception as exc:
        # The job itself broke (not one item): say so on the job instead of leaving it running.
        log.exception("job %s broke", job_id)
        _fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}")


def _run(plan: JobPlan) -> None:
    job_id = plan.job_id
    cpu_start, wall_start = time.process_time(), time.monotonic()
    try:
        runner = state.current().cache.get(plan.spec)
    except ModelLoadError as exc:
        _fail(job_id, "model_load_failed", str(exc))
        return
    store = get_store()
    try:
        with store.open(plan.input_uri, "rb") as f:
            total = count_items(f)
    except OSError as exc:
        _fail(job_id, "input_unreadable", f"the input file cannot be read: {exc}")
        return
    if total == 0:
        _fail(job_id, "empty_input", "the input file has no items")
        return
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(counts_total=total))

    prefix = ("tenants", plan.tenant_id, "jobs", job_id)
    outputs = ResultWriter(store, store.uri(*prefix, "output.jsonl"))
    errors = ResultWriter(store, store.uri(*prefix, "errors.jsonl"))
    cancelled = False
    try:
        with store.open(plan.input_uri, "rb") as f:
            for chunk in iter_chunks(iter_lines(f), get_settings().chunk_items):
                result = run_chunk(runner, chunk, plan.options)
                outputs.write(result.outputs)
                errors.write(result.errors)
                with session_scope() as session:
                    status = record_progress(
                        session, job_id, len(result.outputs), len(result.errors)
                    )
                if status == JobStatus.CANCELLING:
                    cancelled = True
                    break
    finally:
        outputs.close()
        errors.close()
    usage = _usage(state.current().device, cpu_start, wall_start)
    _finish(plan, outputs, errors, cancelled, usage)


def _start(job_id: str, worker: str) -> JobPlan | None:
    device = state.current().device
    with session_scope() as session:
        started = transition(
            session, job_id, [JobStatus.QUEUED], JobStatus.RUNNING,
            event_data={"worker": worker, "device": device},
            started_at=utcnow(), worker=worker, attempts=Job.attempts + 1,
        )
        if not started:
            log.info("job %s is not queued any more; nothing to do", job_id)
            return None
        job = session.get_one(Job, job_id)
        input_file = session.get_one(File, job.input_file_id)
        if job.model_version_id is None:
            spec = builtin_spec((job.model or "").partition("@")[0], device=device)
        else:
            version = session.get_one(ModelVersion, job.model_version_id)
            spec = ModelSpec(
                key=f"{job.tenant_id}/{job.model}", framework=version.framework,
                task=version.task, path=str(get_store().local_path(version.uri)), device=device,
            )
        settings = get_settings()
        options = RunOptions(
            batch_tokens=int(job.params.get("batch_tokens", settings.batch_tokens)),
            batch_size=int(job.params.get("batch_size", settings.batch_size)),
            max_chars=settings.max_item_chars,
        )
        return JobPlan(job_id, job.tenant_id, input_file.uri, spec, options)


def _finish(
    plan: JobPlan,
    outputs: ResultWriter,
    errors: ResultWriter,
    cancelled: bool,
    usage: dict[str, float],
) -> None:
    with session_scope() as session:
        out_file = register_file(
            session, plan.tenant_id, FilePurpose.BATCH_OUTPUT, f"{plan.job_id}_output.jsonl",
            outputs.uri, outputs.size, outputs.sha256,
        )
        err_file_id = None
        if errors.lines:
            err_file_id = register_file(
                session, plan.tenant_id, FilePurpose.BATCH_ERROR, f"{plan.job_id}_errors.jsonl",
                errors.uri, errors.size, errors.sha256,
            ).id
        values: dict[str, Any] = {
            "output_file_id": out_file.id, "error_file_id": err_file_id, "usage": usage,
        }
        counts = {"succeeded": outputs.lines, "failed": errors.lines}
        if cancelled:
            transition(session, plan.job_id, [JobStatus.CANCELLING], JobStatus.CANCELLED,
                       event_data=counts, **values)
        # A cancel that arrives after the last chunk is too late: every item is done.
        elif not transition(
            session, plan.job_id, [JobStatus.RUNNING, JobStatus.CANCELLING], JobStatus.SUCCEEDED,
            event_data=counts, **values,
        ):
            log.warning("job %s changed status under its worker; result files kept", plan.job_id)


def _fail(job_id: str, code: str, message: str) -> None:
    log.warning("job %s failed: %s: %s", job_id, code, message)
    with session_scope() as session:
        transition(
            session, job_id, [JobStatus.RUNNING, JobStatus.CANCELLING], JobStatus.FAILED,
            event_data={"code": code}, error={"code": code, "message": message},
        )


def _usage(device: str, cpu_start: float, wall_start: float) -> dict[str, float]:
    # process_time covers every thread of this process, torch's intra-op pool included.
    cpu = round(time.process_time() - cpu_start, 3)
    gpu = round(time.monotonic() - wall_start, 3) if device.startswith("cuda") else 0.0
    return {"cpu_seconds": cpu, "gpu_seconds": gpu}
