from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.ids import new_id
from app.models import File, FilePurpose, Job, Tenant
from app.models.job import TERMINAL_STATUSES
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
) -> File:
    """A file the farm wrote itself (results), already in the store."""
    file = File(
        tenant_id=tenant_id, purpose=purpose, filename=filename, uri=uri, bytes=size, sha256=sha256
    )
    session.add(file)
    session.flush()
    return file


def get_file(session: Session, tenant: Tenant, file_id: str) -> File:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant.id))
    if file is None:
        raise NotFound(f"no file {file_id!r}")
    return file


def delete_file(session: Session, tenant: Tenant, file_id: str) -> str:
    """Remove a file's row; returns its store URI, for the caller to remove once this has
    committed. Refused (409) while a job that has not ended reads it. Finished jobs that named
    it (as input or result) keep their record, without the file; a model version keeps its own
    copy."""
    file = get_file(session, tenant, file_id)
    # Locked first: a job submitted meanwhile either commits before (and is seen below) or
    # fails its foreign key after, never reads a file that is gone.
    session.execute(select(File.id).where(File.id == file.id).with_for_update())
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
        raise Conflict(f"job {active} has not ended and reads this file", code="file_in_use")
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
