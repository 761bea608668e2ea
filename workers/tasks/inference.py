"""Batch inference: plan a job into shards, run one shard, assemble the results.

The planning task also starts training jobs (workers/tasks/training.py): it claims any queued
job, and the sweeper re-sends it for any job whose lease ran out before it made shards.

Every database write is a short transaction of its own, retried while PostgreSQL is away, so
counts advance while a job runs and a cancel or a deadline is seen between chunks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import chain, islice
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.broker.dispatch import TASK_RUN_SHARD
from app.config import get_settings
from app.db import utcnow
from app.ids import new_id
from app.models import File, Job, JobShard, JobStatus, JobType, ModelVersion, ShardStatus
from app.services import control, planning, results
from app.services import shards as shard_service
from app.services.jobs import add_event
from app.services.results import ResultFile
from app.storage import get_store
from app.streams import Publisher
from app.unit_of_work import Message, send_after_commit, session_scope
from workers import state
from workers.reliability import JobWatch, ShardWatch, db_retry, new_owner, owner_is_dead
from workers.runtime import ModelLoadError, ModelSpec, RunOptions, Stopped
from workers.runtime.base import without_paths
from workers.runtime.items import (
    Line,
    iter_chunks,
    iter_lines,
    parse_line,
    read_lines,
    run_chunk,
)
from workers.runtime.openai_lines import OpenAIRequests, expired_line
from workers.tasks import image_inputs
from workers.tasks.assemble import assemble_job
from workers.tasks.release import release_shards
from workers.tasks.results import ResultWriter, part_uris
from workers.tasks.retry_lines import LineMap, LineMapWriter

log = logging.getLogger(__name__)

#: A planner renews its lease while it reads an input at least this large (or a retry's).
WATCHED_INPUT_BYTES = 16 * 1024 * 1024


# -- planning ---------------------------------------------------------------------------------


def plan_job(job_id: str, worker: str) -> None:
    """Split the input into shards of SHARD_ITEMS items (by byte offset) and queue them."""
    settings = get_settings()
    owner = new_owner()

    def claim() -> tuple[planning.Claim, ShardPlan | None] | None:
        with session_scope() as session:
            claimed = planning.claim_job(
                session,
                job_id,
                owner,
                worker,
                settings.lease_seconds,
                settings.max_attempts,
                owner_is_dead,
                shard_items,
            )
            if claimed is None or claimed.shard is None:
                return None if claimed is None else (claimed, None)
            return claimed, _shard_plan(session, claimed.shard, claimed.input_uri)

    claimed = db_retry(claim)
    if claimed is None:
        log.info("job %s is not waiting to be planned; nothing to do", job_id)
        return
    start, here = claimed
    if here is not None:  # planned in the claim: a job of one shard, run here
        _run_claimed(here, owner)
        return
    if start.planned == "run":  # planned in the claim, its shard waits for its turn
        release_shards(start.job.queue)
        return
    if start.planned == "assemble":
        assemble_job(job_id)
        return
    if start.job.type == JobType.TRAINING:  # one task, holding the job's lease, no shards
        from workers.tasks.training import train_job

        train_job(job_id, owner)
        return
    input_uri, retry = start.input_uri, start.retry
    if input_uri is None and retry is None:
        message = "the retried job's input or error file is gone (deleted)"
        db_retry(fail_job, job_id, "nothing_to_retry", message, owner)
        return
    try:
        # Reading a large input (from S3, say) may outlast a lease: renewed while it reads. A
        # small one is read long before it runs out, and starting the watch's thread cost a
        # one-item job about 20 ms here.
        small = start.input_bytes is not None and start.input_bytes < WATCHED_INPUT_BYTES
        watch = (
            contextlib.nullcontext() if small else JobWatch(job_id, owner, settings.lease_seconds)
        )
        with watch:
            if input_uri is None:
                assert retry is not None
                input_uri = _make_retry_input(job_id, owner, retry, settings.max_line_bytes)
                if input_uri is None:
                    return
            elif image_inputs.is_archive(input_uri):  # images: made into JSONL items first
                input_uri = image_inputs.items_from_archive(job_id, owner, input_uri)
                if input_uri is None:
                    return
            ranges = split_input(input_uri, shard_items(start.items))
    except image_inputs.InputRefused as exc:
        db_retry(fail_job, job_id, exc.code, exc.message, owner)
        return
    except (OSError, ValueError, KeyError) as exc:
        message = f"the input file cannot be read: {without_paths(str(exc))}"
        db_retry(fail_job, job_id, "input_unreadable", message, owner)
        return
    if not ranges:
        db_retry(fail_job, job_id, "empty_input", "the input file has no items", owner)
        return

    def record() -> tuple[shard_service.PlanOutcome, ShardPlan | None]:
        with session_scope() as session:
            # A job of one shard runs it here: the shard is recorded already claimed by this
            # task, sparing a trip through the broker and a claim. It keeps its own lease,
            # attempts and part files, so a crash is recovered as any shard's. Not while
            # another tenant waits in the pool: then it takes its turn (decision 0015).
            alone = len(ranges) == 1 and planning.run_here(session, start.job)
            outcome, shard = shard_service.create_shards(
                session,
                job_id,
                owner,
                ranges,
                run_here_seconds=settings.lease_seconds if alone else None,
            )
            return outcome, None if shard is None else _shard_plan(session, shard)

    outcome, here = db_retry(record)
    if here is not None:
        _run_claimed(here, owner)
    elif outcome == "run":  # the scheduler releases what fits in the pool's window
        release_shards(start.job.queue)
    elif outcome == "assemble":
        assemble_job(job_id)


def _make_retry_input(
    job_id: str, owner: str, source: control.RetrySource, max_line_bytes: int
) -> str | None:
    """Stream the first job's failed lines into the retry's own input file (no transaction open
    meanwhile), with each line's number in the file the tenant uploaded beside it
    (workers/tasks/retry_lines.py), then attach it to the job; None when this planner lost the
    job on the way."""
    failed = set()
    with get_store().open(source.error_uri, "rb") as f:
        for _, raw, _ in read_lines(f, max_bytes=max_line_bytes):
            if raw is not None and raw.strip():
                failed.add(int(parse_line(raw)["line"]))
    store = get_store()
    uri = store.uri("tenants", source.tenant_id, "files", new_id("file"))
    lines_uri = results.retry_lines_uri(source.tenant_id, job_id)
    lines = 0

    def picked(numbers: LineMapWriter) -> Iterator[bytes]:
        # Bounded like every input read: an over-long line (it failed as line_too_long, and
        # would again) is left out. The error lines of a retry name its lines by their
        # original numbers (`original`), and so does the map written for this one.
        nonlocal lines
        with store.open(source.input_uri, "rb") as f, LineMap(source.lines_uri) as original:
            for number, raw, _ in read_lines(f, max_bytes=max_line_bytes):
                first = original(number)
                if first in failed and raw is not None:
                    lines += 1
                    numbers.add(first)
                    yield raw if raw.endswith(b"\n") else raw + b"\n"

    with LineMapWriter(lines_uri) as numbers:
        size, sha256 = store.write_stream(uri, picked(numbers), limit=None)
    made = ResultFile(uri, size, sha256, lines)

    def attach() -> bool:
        with session_scope() as session:
            return control.attach_retry_input(session, job_id, owner, source.tenant_id, made)

    if not db_retry(attach):
        store.delete(uri)
        store.delete(lines_uri)
        return None
    return uri


def shard_items(kind: planning.ItemKind) -> int:
    """Items per shard: scikit-learn items come in larger shards, images in smaller ones."""
    settings = get_settings()
    if kind == "cheap":
        return settings.sklearn_shard_items
    return settings.image_shard_items if kind == "image" else settings.shard_items


def split_input(uri: str, shard_items: int) -> list[shard_service.ShardRange]:
    """One streaming pass: where each shard's first item starts (byte offset, line number)."""
    ranges: list[shard_service.ShardRange] = []
    items, offset = 0, 0
    start: tuple[int, int, int] | None = None  # (item, offset, line)
    max_bytes = get_settings().max_line_bytes
    with get_store().open(uri, "rb") as f:
        # The same reader as the shards', so both agree on what an item is (over-long lines
        # included: they are items, and become error lines).
        for number, raw, size in read_lines(f, max_bytes=max_bytes):
            if raw is None or raw.strip():
                if start is None:
                    start = (items, offset, number)
                items += 1
                if items - start[0] == shard_items:
                    ranges.append(shard_service.ShardRange(start[0], items, start[1], start[2]))
                    start = None
            offset += size
    if start is not None:
        ranges.append(shard_service.ShardRange(start[0], items, start[1], start[2]))
    return ranges


def fail_job(
    job_id: str,
    code: str,
    message: str,
    owner: str | None = None,
    shard: tuple[int, str] | None = None,
) -> bool:
    """The job fails with the reason; with `owner`, only while that planner holds its lease,
    with `shard` (shard id, owner), only while that attempt holds the shard's (an attempt that
    lost it decides nothing)."""
    where = () if shard is None else (shard_service.holds_shard(*shard),)
    with session_scope() as session:
        failed = shard_service.fail_job(
            session, job_id, code, message, where=where, lease_owner=owner
        )
    if failed:
        log.warning("job %s failed: %s: %s", job_id, code, message)
    return failed


# -- one shard --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRef:
    """A tenant's model version as the database names it (ProcessState.version's arguments)."""

    key: str
    framework: str
    task: str
    uri: str
    precision: str | None = None  #: the job's params.precision (None: the process's own)


@dataclass(frozen=True)
class ShardPlan:
    shard: JobShard
    shards_total: int
    tenant_id: str
    queue: str
    input_uri: str
    model: ModelSpec | VersionRef
    options: RunOptions
    #: lines in OpenAI's Batch API format (params `format: openai`); None: the native format
    requests: OpenAIRequests | None = None
    #: a synchronous request's `stream: true`: text deltas go out as they are decoded
    stream: bool = False
    #: a retry's original line numbers (workers/tasks/retry_lines.py)
    lines_uri: str | None = None

    @property
    def spec(self) -> ModelSpec:
        """The model's spec, its files fetched from the store if they are remote (no lock held
        by then: called after the claim's transaction)."""
        if isinstance(self.model, ModelSpec):
            return self.model
        ref = self.model
        spec = state.current().version(ref.key, ref.framework, ref.task, ref.uri)
        return spec if ref.precision is None else replace(spec, precision=ref.precision)


def run_shard(job_id: str, index: int, worker: str) -> None:
    owner = new_owner()
    plan = db_retry(_claim_shard, job_id, index, owner)
    if plan is None:
        log.info("shard %s/%d is not waiting for a worker; nothing to do", job_id, index)
        return
    _run_claimed(plan, owner)


def _run_claimed(plan: ShardPlan, owner: str) -> None:
    """Run a shard this task holds the lease of, and finish it (and its job, if it was the
    last shard: a job of one shard ends here, its part files being its result files)."""
    settings = get_settings()
    job_id, index = plan.shard.job_id, plan.shard.index
    cpu_start, wall_start = time.process_time(), time.monotonic()
    try:
        spec = plan.spec
    except Exception as exc:  # the store is unreachable: the shard gets another try
        log.exception("shard %s/%d could not fetch its model", job_id, index)
        _give_back(plan, owner, f"the model's files could not be fetched ({type(exc).__name__})")
        return
    try:
        runner = state.current().cache.get(spec)
    except ModelLoadError as exc:
        if exc.transient:  # this worker's trouble (out of memory): another attempt may load it
            _give_back(plan, owner, str(exc))
            return
        held = (plan.shard.id, owner)
        failed = db_retry(fail_job, job_id, "model_load_failed", str(exc), shard=held)
        if failed:  # its shards in flight are closed (a one-shard job's too): room to fill
            release_shards(plan.queue)
        return
    stem = shard_service.parts_stem(index, plan.shard.attempts, owner)
    out_uri, err_uri = part_uris(get_store(), plan.tenant_id, job_id, stem)
    try:
        with (
            ShardWatch(plan.shard.id, job_id, owner, settings.lease_seconds) as watch,
            ResultWriter(get_store(), out_uri) as outputs,
            # Closed first (a `with` closes in reverse): `outputs` syncs their folder after it.
            ResultWriter(get_store(), err_uri, sync_folder=False) as errors,
        ):
            outcome, tokens = _run_items(plan, runner, owner, watch, outputs, errors)
    except Exception as exc:  # SoftTimeLimitExceeded included: the shard gets another try
        log.exception("shard %s/%d broke", job_id, index)
        _give_back(plan, owner, f"{type(exc).__name__}: {without_paths(str(exc))}")
        return
    if outcome == "lost":
        log.warning("shard %s/%d lost its lease; another attempt will redo it", job_id, index)
        return
    items = plan.shard.end_item - plan.shard.start_item
    if outcome == "done" and outputs.lines + errors.lines != items:
        # Never closed short: its lines would be missing from the job's results.
        reason = f"{outputs.lines + errors.lines} result lines were written for {items} items"
        log.error("shard %s/%d: %s", job_id, index, reason)
        _give_back(plan, owner, reason)
        return
    usage = _usage(state.current().device, cpu_start, wall_start)
    finish_began = utcnow()
    status = ShardStatus.SUCCEEDED if outcome == "done" else ShardStatus.CANCELLED

    # Which backend ran the job, and why not ONNX when it fell back: said once, by shard 0.
    backend = [_backend_event(runner)] if index == 0 and spec.backend == "onnx" else []

    def finish() -> bool:
        """True when the job still needs assembling from its shards' parts."""
        with session_scope() as session:
            if plan.shards_total == 1:
                # One shard: its part files are the job's result files, nothing to copy.
                results.end_with_only_shard(
                    session,
                    plan.shard,
                    owner,
                    status,
                    usage,
                    outputs.result(),
                    errors.result(),
                    events=backend,
                    tokens=tokens.read,
                    completion_tokens=tokens.wrote,
                    finish_began=finish_began,
                )
                return False
            for type_, data in backend:
                add_event(session, job_id, type_, data, flush=False)
            return shard_service.finish_shard(
                session,
                plan.shard,
                owner,
                status,
                usage,
                outputs.lines,
                errors.lines,
                tokens=tokens.read,
                completion_tokens=tokens.wrote,
            )

    assemble = db_retry(finish)
    # This shard left the window (a job's only shard too: it held a slot), so the next one
    # goes, before the assembly, which may take a while.
    release_shards(plan.queue)
    if assemble:
        assemble_job(job_id)


def _backend_event(runner: object) -> tuple[str, dict[str, str]]:
    data = {"backend": getattr(runner, "backend", "torch")}
    reason = getattr(runner, "fallback_reason", None)
    if reason:
        data["fallback_reason"] = reason
    return "inference_backend", data


def _give_back(plan: ShardPlan, owner: str, reason: str) -> None:
    """Another attempt, or after MAX_ATTEMPTS the job fails with the reason; only while this
    attempt holds the shard (a stale one writes nothing and sends nothing)."""
    shard = plan.shard
    if shard.attempts >= get_settings().max_attempts:
        message = f"shard {shard.index} failed {shard.attempts} times; last: {reason}"
        db_retry(fail_job, shard.job_id, "shard_failed", message, shard=(shard.id, owner))
        return

    def release() -> None:
        with session_scope() as session:
            if shard_service.release_shard(session, shard, owner, reason):
                message = Message(TASK_RUN_SHARD, [shard.job_id, shard.index], plan.queue)
                send_after_commit(session, message)

    db_retry(release)


def _claim_shard(job_id: str, index: int, owner: str) -> ShardPlan | None:
    settings = get_settings()
    with session_scope() as session:
        shard = planning.claim_shard(
            session,
            job_id,
            index,
            owner,
            settings.lease_seconds,
            settings.max_attempts,
            owner_is_dead,
        )
        return None if shard is None else _shard_plan(session, shard)


def _shard_plan(session: Session, shard: JobShard, input_uri: str | None = None) -> ShardPlan:
    """What running a claimed shard needs to know of its job, read in the claim's transaction
    (`input_uri`: already known to the claim)."""
    settings = get_settings()
    job = session.get_one(Job, shard.job_id)
    if input_uri is None:
        input_uri = session.get_one(File, job.input_file_id).uri
    process = state.current()
    if job.model_version_id is None:
        spec: ModelSpec | VersionRef = process.builtin((job.model or "").partition("@")[0])
        if job.params.get("precision"):  # chosen by the job (docs/decisions/0017)
            spec = replace(spec, precision=job.params["precision"])
    else:
        # Only named here: fetching it from the store (S3, say) waits until the claim's
        # transaction has ended, so no row lock is held over network I/O.
        version = session.get_one(ModelVersion, job.model_version_id)
        # A job is only ever created against a ready version, which has both.
        assert version.task is not None and version.uri is not None
        spec = VersionRef(
            f"{job.tenant_id}/{job.model}",
            version.framework,
            version.task,
            version.uri,
            job.params.get("precision"),
        )
    options = RunOptions(
        batch_tokens=int(job.params.get("batch_tokens") or process.batch_tokens),
        batch_size=int(job.params.get("batch_size") or process.batch_size),
        max_chars=settings.max_item_chars,
        max_line_bytes=settings.max_line_bytes,
        kv_tokens=settings.gpu_generation_kv_tokens
        if process.pool == "gpu"
        else settings.generation_kv_tokens,
        max_new_tokens=settings.generation_max_tokens,
        # A job may ask for fewer sequences decoding together, never more than the pool's.
        max_rows=min(
            int(job.params.get("batch_size") or 1 << 30),
            settings.gpu_batch_size if process.pool == "gpu" else settings.generation_batch_size,
        ),
        params=dict(job.params),
        max_output_bytes=settings.max_output_line_bytes,
    )
    if spec.task.startswith("image-"):
        options = image_options(options, job.params, process.pool == "gpu")
    elif spec.task == SPEECH:
        options = audio_options(options, job.params)
    requests = None
    if job.params.get("format") == "openai":
        requests = OpenAIRequests(str(job.params.get("endpoint")), job.model or "")
    stream = requests is not None and bool(job.params.get("stream"))
    return ShardPlan(
        shard,
        job.shards_total or 1,
        job.tenant_id,
        job.queue,
        input_uri,
        spec,
        options,
        requests,
        stream,
        results.retry_lines_uri(job.tenant_id, job.id) if job.retry_of else None,
    )


def image_options(options: RunOptions, params: dict[str, Any], gpu: bool = False) -> RunOptions:
    """An image job's knobs: its lines carry base64 pictures (longer than text lines), and
    its micro-batches are cut by pixels (workers/runtime/images.py) and, on a CPU, hold at
    most IMAGE_BATCH_SIZE pictures (a job's batch_size may say otherwise)."""
    settings = get_settings()
    # base64 is 4 bytes for every 3, and the JSON around a picture is short.
    line_bytes = settings.max_image_bytes * 4 // 3 + 64 * 1024
    return replace(
        options,
        max_line_bytes=max(options.max_line_bytes, line_bytes),
        top_k=int(params.get("top_k") or 5),
        normalize=bool(params.get("normalize") or False),
        max_image_pixels=settings.max_image_pixels,
        batch_pixels=settings.image_batch_pixels,
        batch_size=options.batch_size
        if gpu or params.get("batch_size")
        else settings.image_batch_size,
    )


SPEECH = "automatic-speech-recognition"


def audio_options(options: RunOptions, params: dict[str, Any]) -> RunOptions:
    """A speech job's knobs: its lines carry base64 audio, its micro-batches are 30 s windows
    (workers/runtime/speech.py), its length limit is MAX_AUDIO_SECONDS."""
    settings = get_settings()
    line_bytes = settings.max_audio_bytes * 4 // 3 + 64 * 1024
    return replace(
        options,
        max_line_bytes=max(options.max_line_bytes, line_bytes),
        batch_size=int(params.get("batch_size") or settings.audio_batch_windows),
        max_audio_seconds=settings.max_audio_seconds,
    )


def chunk_items(task: str) -> int:
    """Items a shard reads and runs together: fewer for pictures and audio (long lines)."""
    settings = get_settings()
    if task.startswith("image-"):
        return settings.image_chunk_items
    if task == SPEECH:
        return settings.audio_chunk_items
    return settings.chunk_items


def _run_items(
    plan: ShardPlan,
    runner: object,
    owner: str,
    watch: ShardWatch,
    outputs: ResultWriter,
    errors: ResultWriter,
) -> tuple[Literal["done", "stopped", "lost"], TokensUsed]:
    """How the shard ended, and the tokens of all its items (recorded only with its finish, so
    once). What it wrote is counted by `outputs` and `errors`: the counts recorded as it goes
    and at its finish are theirs, absolute, so a write retried after a lost answer never adds
    twice."""
    settings = get_settings()
    shard = plan.shard
    # The runner asks between micro-batches, so a cancel does not wait for the whole chunk.
    options = replace(plan.options, should_stop=watch.should_stop)
    if plan.stream:  # the API process answering the request forwards them (app/streams.py)
        options = replace(options, on_text=Publisher(shard.job_id))
    run = run_chunk if plan.requests is None else plan.requests.run_chunk
    tokens = TokensUsed()
    with get_store().open(plan.input_uri, "rb") as f, LineMap(plan.lines_uri) as original:
        f.seek(shard.start_offset)
        lines = original.lines(
            islice(
                iter_lines(f, first_line=shard.start_line, max_bytes=plan.options.max_line_bytes),
                shard.end_item - shard.start_item,
            )
        )
        chunks = iter_chunks(lines, chunk_items(plan.model.task))
        chunk = next(chunks, None)
        recorded_at = time.monotonic() - settings.progress_seconds  # the first chunk records
        while chunk is not None:
            try:
                result = run(runner, chunk, options)  # type: ignore[arg-type]
            except Stopped:  # the unfinished chunk is dropped; finished chunks are kept
                if watch.lost:
                    return "lost", tokens
                _stopped(plan, chunk, chunks, errors)
                return "stopped", tokens
            outputs.write(result.outputs)
            errors.write(result.errors)
            tokens.read += result.tokens
            tokens.wrote += result.completion_tokens
            chunk = next(chunks, None)
            if chunk is None:  # what is left goes with the shard's finish
                return "done", tokens
            # Counts are recorded about once a PROGRESS_SECONDS, not per chunk: a chunk of
            # scikit-learn items takes milliseconds, a commit about as long. The watch thread
            # renews the lease and sees a cancel meanwhile.
            if time.monotonic() - recorded_at < settings.progress_seconds:
                continue
            progress = db_retry(_record, shard, owner, outputs.lines, errors.lines)
            recorded_at = time.monotonic()
            if not progress.held:
                return "lost", tokens
            if progress.past_deadline or progress.job_status != JobStatus.RUNNING:
                _stopped(plan, chunk, chunks, errors)
                return "stopped", tokens
    return "done", tokens


@dataclass
class TokensUsed:
    """A shard's tokens so far: what its model read, and what it wrote (text generation)."""

    read: int = 0
    wrote: int = 0


def _stopped(
    plan: ShardPlan, chunk: list[Line], chunks: Iterator[list[Line]], errors: ResultWriter
) -> None:
    """The shard stops because its job is stopping. When a batch expired (its deadline passed),
    each request it leaves unrun gets a `batch_expired` error line, as in OpenAI's error
    files."""
    if not _stopping(plan.shard.job_id) or plan.requests is None:
        return
    for part in chain([chunk], chunks):
        errors.write([expired_line(number, raw) for number, raw in part])


def _stopping(job_id: str) -> bool:
    """A deadline that passed is recorded; True when the deadline is why the job stops."""

    def expire_if_due() -> bool:
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            if job.status == JobStatus.RUNNING and shard_service.past_deadline(session, job_id):
                shard_service.request_stop(session, job_id, shard_service.DEADLINE_ERROR)
            return (job.error or {}).get("code") == shard_service.DEADLINE_ERROR["code"]

    return bool(db_retry(expire_if_due))


def _record(shard: JobShard, owner: str, succeeded: int, failed: int) -> shard_service.Progress:
    with session_scope() as session:
        return shard_service.record_shard_progress(
            session, shard.id, shard.job_id, owner, succeeded, failed, get_settings().lease_seconds
        )


def _usage(device: str, cpu_start: float, wall_start: float) -> dict[str, float]:
    # process_time covers every thread of this process, torch's intra-op pool included.
    cpu = time.process_time() - cpu_start
    gpu = time.monotonic() - wall_start if device.startswith("cuda") else 0.0
    return {"cpu_seconds": cpu, "gpu_seconds": gpu}
