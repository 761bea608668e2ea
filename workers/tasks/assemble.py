"""The last step of a batch job: its shards' part files become one output and one error file,
in input order, and the job ends `succeeded` (or `cancelled`, keeping what was finished)."""

from __future__ import annotations

import logging
import secrets
import time
from itertools import islice

from app.config import get_settings
from app.models import Job
from app.services import lost_results
from app.services.results import Assembly, Part, claim_assembly, complete_job
from app.services.shards import ShardRange, fail_job, renew_job_lease
from app.storage import get_store
from app.unit_of_work import session_scope
from workers.reliability import db_retry, new_owner
from workers.runtime.items import iter_chunks, iter_lines
from workers.runtime.openai_lines import expired_line
from workers.tasks.release import release_shards
from workers.tasks.results import PartLost, ResultWriter, append_part, final_uris, part_uris
from workers.tasks.retry_lines import LineMap

log = logging.getLogger(__name__)

#: An assembly holds the job's lease for this many LEASE_SECONDS, renewed while it copies.
ASSEMBLY_LEASES = 10


def assemble_job(job_id: str) -> None:
    """Safe to call any number of times: only one caller holds the job's lease to do it."""
    owner = new_owner()
    claimed = db_retry(_claim, job_id, owner)
    if claimed is not None:
        _assemble_claimed(job_id, owner, claimed)


def _assemble_claimed(job_id: str, owner: str, claimed: Assembly) -> bool:
    """Write this attempt's own result files, renewing the lease as it goes, and end the job
    with them. An attempt that lost its lease on the way writes nothing to the database and
    removes its files: the files the job points at are never touched. A shard whose part
    files are missing or short is run again (`lost_results`): the job never ends short."""
    store = get_store()
    out_uri, err_uri = final_uris(store, claimed.tenant_id, job_id, secrets.token_hex(6))
    settings = get_settings()
    renewed_at = time.monotonic()
    held = True
    lost: list[int] = []
    # `errors` closes first; `outputs`, closed last, syncs the folder of both.
    with (
        ResultWriter(store, out_uri) as outputs,
        ResultWriter(store, err_uri, sync_folder=False) as errors,
    ):
        for part in claimed.parts:
            if time.monotonic() - renewed_at > settings.lease_seconds:
                held = db_retry(_renew, job_id, owner, settings.lease_seconds * ASSEMBLY_LEASES)
                renewed_at = time.monotonic()
                if not held:
                    break
            if isinstance(part, ShardRange):  # an expired batch's shard that never ran
                _write_expired(claimed, part, errors)
            elif not _append(claimed, job_id, part, outputs, errors):
                lost.append(part.index)
    if held and lost:
        log.warning("job %s: the results of shards %s are lost; they run again", job_id, lost)
        held = False  # nothing of this attempt is used
        _redo(job_id, owner, lost)
    elif held and claimed.all_succeeded and outputs.lines + errors.lines != claimed.counts_total:
        message = (
            f"{outputs.lines + errors.lines} result lines were assembled "
            f"for {claimed.counts_total} items"
        )
        log.error("job %s: %s", job_id, message)
        held = False
        db_retry(_fail, job_id, owner, message)
    if held and db_retry(_complete, job_id, owner, claimed, outputs, errors):
        _remove_parts(claimed.tenant_id, job_id)
        return True
    if not lost:
        log.warning("assembly of job %s lost its lease; another attempt finishes it", job_id)
    store.delete(out_uri.rsplit("/", 1)[0], recursive=True)  # this attempt's own folder
    return False


def _append(
    claimed: Assembly, job_id: str, part: Part, outputs: ResultWriter, errors: ResultWriter
) -> bool:
    """Copy a shard's part files; False when they are not exactly what its close recorded."""
    store = get_store()
    part_out, part_err = part_uris(store, claimed.tenant_id, job_id, part.stem)
    try:
        return (
            append_part(store, part_out, outputs) == part.outputs
            and append_part(store, part_err, errors) == part.errors
        )
    except PartLost:
        return False


def _redo(job_id: str, owner: str, lost: list[int]) -> None:
    """Run the lost shards again (the scheduler releases them), or, on a stopping job, assemble
    again without them."""

    def redo() -> tuple[lost_results.Redo, str]:
        with session_scope() as session:
            outcome = lost_results.redo_lost_parts(
                session, job_id, owner, lost, get_settings().max_attempts
            )
            return outcome, session.get_one(Job, job_id).queue

    outcome, queue = db_retry(redo)
    if outcome == "run":
        release_shards(queue)
    elif outcome == "assemble":
        assemble_job(job_id)


def _fail(job_id: str, owner: str, message: str) -> bool:
    with session_scope() as session:
        return fail_job(session, job_id, lost_results.RESULTS_LOST, message, lease_owner=owner)


def _write_expired(claimed: Assembly, shard: ShardRange, errors: ResultWriter) -> None:
    """A `batch_expired` error line for each of the shard's lines, read from the input."""
    assert claimed.input_uri is not None
    max_bytes = get_settings().max_line_bytes
    with get_store().open(claimed.input_uri, "rb") as f, LineMap(claimed.lines_uri) as original:
        f.seek(shard.start_offset)
        lines = original.lines(iter_lines(f, first_line=shard.start_line, max_bytes=max_bytes))
        for chunk in iter_chunks(islice(lines, shard.end_item - shard.start_item), 1000):
            errors.write([expired_line(number, raw) for number, raw in chunk])


def _renew(job_id: str, owner: str, seconds: float) -> bool:
    with session_scope() as session:
        return renew_job_lease(session, job_id, owner, seconds)


def _claim(job_id: str, owner: str) -> Assembly | None:
    with session_scope() as session:
        return claim_assembly(
            session, job_id, owner, get_settings().lease_seconds * ASSEMBLY_LEASES
        )


def _complete(
    job_id: str, owner: str, claimed: Assembly, outputs: ResultWriter, errors: ResultWriter
) -> bool:
    with session_scope() as session:
        return complete_job(
            session,
            job_id,
            claimed.tenant_id,
            outputs.result(),
            errors.result(),
            claimed.all_succeeded,
            lease_owner=owner,
        )


def _remove_parts(tenant_id: str, job_id: str) -> None:
    store = get_store()
    try:
        store.delete(store.uri("tenants", tenant_id, "jobs", job_id, "parts"), recursive=True)
    except OSError:  # only disk space is at stake; the job is complete
        log.warning("could not remove the part files of job %s", job_id, exc_info=True)
