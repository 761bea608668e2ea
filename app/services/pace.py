"""How fast a running job goes and when it should end: `progress.items_per_second` and
`progress.eta_seconds` of the Job, the CLI's bar and the /ui pages.

The rate is the job's own average since a worker took it (items with an output or an error
line, over the seconds since `started_at`): it needs no history, reads nothing more than the
job row, and is the same in every API process. Counts are recorded about once a second and
every chunk (CHUNK_ITEMS), so the rate and the ETA move that often. A training job's counts
are steps, so its rate is steps per second."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db import utcnow
from app.models import Job, JobStatus


def pace(job: Job, now: datetime | None = None) -> dict[str, Any] | None:
    """{"items_per_second", "eta_seconds"} while the job runs (the ETA is null until an item
    is done or when the total is not known); None otherwise."""
    if job.status != JobStatus.RUNNING or job.started_at is None:
        return None
    elapsed = ((now or utcnow()) - job.started_at).total_seconds()
    done = (job.counts_succeeded or 0) + (job.counts_failed or 0)
    rate = done / elapsed if elapsed > 0 else 0.0
    left = (job.counts_total or 0) - done
    eta = round(left / rate, 1) if rate > 0 and job.counts_total else None
    return {"items_per_second": round(rate, 1), "eta_seconds": eta}
