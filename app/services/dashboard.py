"""What the /ui pages show that the JSON API does not already hand out."""

from __future__ import annotations

from itertools import islice
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Job, JobStatus, Tenant
from app.services import files
from app.storage import get_store

ERROR_LINES = 20  #: error lines a job page shows (the file itself has them all)
LINE_CHARS = 2000  #: what one error line may show


def error_lines(session: Session, tenant: Tenant, job: Job, limit: int = ERROR_LINES) -> list[Any]:
    """The first error lines of a finished job, parsed (a line that is not JSON as text)."""
    if job.error_file_id is None:
        return []
    file = files.get_file(session, tenant, job.error_file_id)
    found = []
    with get_store().open(file.uri) as lines:
        for raw in islice(lines, limit):
            text = raw[:LINE_CHARS]
            try:
                found.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                found.append(text.decode("utf-8", "replace"))
    return found


def active_jobs_by_queue(session: Session, tenant: Tenant) -> dict[str, dict[str, int]]:
    """The tenant's jobs not yet ended, per queue and status (a tenant sees only its own)."""
    waiting = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
    rows = session.execute(
        select(Job.queue, Job.status, func.count())
        .where(Job.tenant_id == tenant.id, Job.status.in_(waiting))
        .group_by(Job.queue, Job.status)
    )
    found: dict[str, dict[str, int]] = {}
    for queue, status, count in rows.tuples():
        found.setdefault(str(queue), {})[str(status)] = int(count)
    return found
