from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.ids import new_id
from app.models import File, FilePurpose, Job, ModelVersion, Tenant, VersionStatus
from app.models.job import TERMINAL_STATUSES
from app.services import tenants
from app.services.errors import Conflict, NotFound, PayloadTooLarge
from app.storage import TooLarge, get_store

log = logging.getLogger(__name__)

UPLOAD_PURPOSES = (FilePurpose.BATCH, FilePurpose.TRAINING, FilePurpose.MODEL)


def file_uri(tenant_id: str, file_id: str) -> str:
    return get_store().uri("tenants", tenant_id, "files", file_id)


def create_file(
    session: Session,
    tenant: Tenant,
    purpose: FilePurpose,
    filename: str,
    chunks: Iterator[bytes],
    limit: int | None,
) -> File:
    """Stream an upload into the store; nothing is held whole in memory."""
    file_id = new_id("file")
    uri = file_uri(tenant.id, file_id)
    try:
        size, sha256 = get_store().write_stream(uri, chunks, limit)
    except TooLarge as exc:
        raise PayloadTooLarge(f"the file is {exc}") from exc
    file = File(
        id=file_id,
        tenant_id=tenant.id,
        purpose=purpose,
        filename=filename[:255] or "upload",
        bytes=size,
        sha256=sha256,
        uri=uri,
        created_at=utcnow(),  # known now, so the row can wait for the session's next flush
    )
    session.add(file)
    return file


def create_items_file(session: Session, tenant: Tenant, items: Iterable[dict[str, object]]) -> File:
    """Inline items become a JSONL input file, so every job reads its input the same way."""
    lines = [json.dumps(item, ensure_ascii=False) + "\n" for item in items]
    body = "".join(lines).encode()
    # Stored like an upload, so counted like one (issue 25: inline items passed the quota).
    tenants.check_storage(session, tenant, len(body), "this file")
    file = create_file(session, tenant, FilePurpose.BATCH, "inline.jsonl", iter([body]), limit=None)
    file.items = len(lines)  # a JSON object a line: never blank, so every line is an item
    return file


def register_file(
    session: Session,
    tenant_id: str,
    purpose: FilePurpose,
    filename: str,
    uri: str,
    size: int,
    sha256: str,
    items: int | None = None,
) -> File:
    """A file the farm wrote itself (results), already in the store."""
    file = File(
        tenant_id=tenant_id,
        purpose=purpose,
        filename=filename,
        uri=uri,
        bytes=size,
        sha256=sha256,
        items=items,
    )
    session.add(file)
    session.flush()
    return file


def get_file(session: Session, tenant: Tenant, file_id: str) -> File:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant.id))
    if file is None:
        raise NotFound(f"no file {file_id!r}")
    return file


def list_files(
    session: Session,
    tenant: Tenant,
    *,
    purpose: str | None = None,
    limit: int = 20,
    after: str | None = None,
) -> tuple[list[File], bool]:
    """The tenant's files newest first, `limit` at a time; ids are time-ordered, so `after`
    (the last id of the page before) is an id comparison."""
    query = select(File).where(File.tenant_id == tenant.id)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    if after:
        get_file(session, tenant, after)  # an unknown cursor is a 404, not an empty page
        query = query.where(File.id < after)
    rows = list(session.scalars(query.order_by(File.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(session: Session, tenant: Tenant, file_id: str) -> str:
    """Remove a file's row; returns its store URI, for the caller to remove once this has
    committed. Refused (409) while a job that has not ended reads it. Finished jobs that named
    it (as input or result) keep their record, without the file; a model version keeps its own
    copy."""
    file = get_file(session, tenant, file_id)
    # Locked first: a job submitted meanwhile either commits before (and is seen below) or
    # fails its foreign key after, never reads a file that is gone.
    session.execute(select(File.id).where(File.id == file.id).with_for_update())
    reader = _reader(session, file)
    if reader is not None:
        raise Conflict(reader, code="file_in_use")
    return _forget(session, file)


def expire_uploads(session: Session, ttl_days: float, limit: int) -> list[str]:
    """Uploads kept RESULT_TTL_DAYS after they were uploaded and after the last job that read
    them ended, whichever is later, and not read now: their rows go (as `delete_file` does);
    returns their URIs, for the caller to remove once this has committed."""
    cutoff = utcnow() - timedelta(days=ttl_days)
    recent_reader = select(Job.id).where(
        Job.input_file_id == File.id,
        or_(Job.status.not_in(list(TERMINAL_STATUSES)), Job.finished_at >= cutoff),
    )
    files = session.scalars(
        select(File)
        .where(File.purpose.in_(list(UPLOAD_PURPOSES)), File.created_at < cutoff)
        .where(~recent_reader.exists())
        .order_by(File.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    return [_forget(session, file) for file in files if _reader(session, file) is None]


def _reader(session: Session, file: File) -> str | None:
    """Why the file cannot go now (something that has not ended reads it), or None."""
    active = session.scalar(
        select(Job.id)
        .where(Job.input_file_id == file.id, Job.status.not_in(list(TERMINAL_STATUSES)))
        .limit(1)
    )
    if active is None:
        # A retry that has not made its input yet reads its first job's input and error files.
        active = session.scalar(
            select(Job.id)
            .where(
                Job.input_file_id.is_(None),
                Job.status.not_in(list(TERMINAL_STATUSES)),
                Job.retry_of.in_(
                    select(Job.id).where(
                        (Job.input_file_id == file.id) | (Job.error_file_id == file.id)
                    )
                ),
            )
            .limit(1)
        )
    if active is not None:
        return f"job {active} has not ended and reads this file"
    # A version still validating reads its upload (one registered after this lock, or missed
    # here, finds the file gone and fails with that reason: app/services/validation.py).
    if session.scalar(
        select(ModelVersion.id)
        .where(ModelVersion.file_id == file.id, ModelVersion.status == VersionStatus.VALIDATING)
        .limit(1)
    ):
        return "a model version registered from this file is validating"
    return None


def _forget(session: Session, file: File) -> str:
    for column in (Job.input_file_id, Job.output_file_id, Job.error_file_id):
        session.execute(update(Job).where(column == file.id).values({column.key: None}))
    session.delete(file)
    session.flush()
    return file.uri


def remove_object(uri: str) -> None:
    """Remove one object of the store after its row is gone; a failure only leaves bytes."""
    try:
        get_store().delete(uri)
    except OSError:
        log.warning("could not remove %s from the store", uri.rsplit("/", 1)[-1], exc_info=True)


def remove_folder(uri: str) -> None:
    """Remove a folder of the store after its rows are gone; a failure only leaves bytes."""
    try:
        get_store().delete(uri, recursive=True)
    except OSError:
        log.warning("could not remove %s from the store", uri.rsplit("/", 1)[-1], exc_info=True)
