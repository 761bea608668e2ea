"""What /metrics, /readyz and the dashboard's pools page read from PostgreSQL.

Every figure is an aggregate over rows, read at scrape time: the rows are the same whichever
API process answers, so a scrape never depends on which process it reached, and nothing has
to be counted in worker processes that Prometheus does not scrape. Totals over finished work
("counters") are sums over job and attempt rows: deleting a finished job lowers them, which
Prometheus' rate() reads as a counter reset, a small price for not keeping a second copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, select, text
from sqlalchemy.orm import Session

from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Job, WorkerHeartbeat
from app.models.job import TERMINAL_STATUSES
from app.services.heartbeats import ALIVE_SECONDS

POOLS = ("cpu", "gpu", "webhooks")
#: Job duration buckets (seconds): one-item jobs take milliseconds, training runs hours.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0, 43200.0)
#: A scrape that PostgreSQL cannot answer in this long gives up rather than pile up.
STATEMENT_TIMEOUT_MS = 2000


@dataclass
class DurationRow:
    type: str
    outcome: str
    buckets: list[int]  # cumulative counts, one per DURATION_BUCKETS entry
    count: int
    sum: float


def cap_time(session: Session) -> None:
    """Bound every statement of this transaction (a scrape must stay cheap)."""
    session.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))


def jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {str(status): int(count) for status, count in rows.tuples()}


def live_workers(session: Session) -> dict[str, int]:
    """Workers per pool that beat within ALIVE_SECONDS; every known pool appears, 0 or not."""
    since = func.statement_timestamp() - timedelta(seconds=ALIVE_SECONDS)
    rows = session.execute(
        select(WorkerHeartbeat.pool, func.count())
        .where(WorkerHeartbeat.seen_at > since)
        .group_by(WorkerHeartbeat.pool)
    )
    counts = dict.fromkeys(POOLS, 0)
    counts.update({str(pool): int(count) for pool, count in rows.tuples()})
    return counts


#: The `model` label of a tenant's own model unless the operator shows names (a scrape is
#: not a tenant's: its model names are that tenant's business).
TENANT_MODEL = "tenant-model"


def _model_label(names: bool) -> ColumnElement[str]:
    """A job's `model` label: its model ref, or TENANT_MODEL for a tenant's own model."""
    model: ColumnElement[str] = func.coalesce(Job.model, literal("unknown"))
    if names:
        return model
    return case((Job.model_version_id.is_(None), model), else_=literal(TENANT_MODEL))


def items_processed(session: Session, names: bool = False) -> dict[tuple[str, str], int]:
    """Items with an output line and with an error line, per model, running jobs included
    (their counts are recorded about once a second), so the rate moves while a job works.
    Tenants' own models are one `tenant-model` unless `names`; builtins are always named."""
    model = _model_label(names)
    rows = session.execute(
        select(
            model,
            func.coalesce(func.sum(Job.counts_succeeded), 0),
            func.coalesce(func.sum(Job.counts_failed), 0),
        )
        .where(Job.type == "inference")
        .group_by(model)
    )
    found: dict[tuple[str, str], int] = {}
    for name, succeeded, failed in rows:
        found[(name, "succeeded")] = int(succeeded)
        found[(name, "failed")] = int(failed)
    return found


def tokens_processed(session: Session, names: bool = False) -> dict[str, tuple[int, int]]:
    """Tokens of text models per model: (what they read, what they generated — text generation
    only), counted as each shard finishes; their rates are tokens per second. Tenants' own
    models are one `tenant-model` unless `names`, as in items_processed."""
    model = _model_label(names)

    def summed(key: str) -> Any:
        return func.coalesce(func.sum(func.coalesce(Job.usage[key].as_integer(), 0)), 0)

    rows = session.execute(
        select(model, summed("tokens"), summed("completion_tokens"))
        .where(Job.type == "inference")
        .group_by(model)
    )
    return {str(model): (int(read), int(wrote)) for model, read, wrote in rows}


def job_durations(session: Session) -> list[DurationRow]:
    """Finished jobs by type and final status: time from start (or submission, for a job
    cancelled before it started) to the end, as cumulative histogram buckets."""
    seconds = func.extract("epoch", Job.finished_at - func.coalesce(Job.started_at, Job.created_at))
    columns = [func.count().filter(seconds <= bound) for bound in DURATION_BUCKETS]
    rows = session.execute(
        select(Job.type, Job.status, func.count(), func.coalesce(func.sum(seconds), 0), *columns)
        .where(and_(Job.status.in_(list(TERMINAL_STATUSES)), Job.finished_at.is_not(None)))
        .group_by(Job.type, Job.status)
    )
    return [
        DurationRow(type_, status, [int(b) for b in buckets], int(count), float(total))
        for type_, status, count, total, *buckets in rows
    ]


def webhook_backlog(session: Session) -> int:
    """Deliveries still to be made: waiting for an attempt or in one now."""
    return int(
        session.scalar(
            select(func.count()).where(
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING])
            )
        )
        or 0
    )


def webhook_failures(session: Session) -> int:
    """Delivery attempts that did not get a 2xx (no answer, an error, or another status)."""
    ok = DeliveryAttempt.status_code.between(200, 299)
    return int(
        session.scalar(
            select(func.count()).where(
                (DeliveryAttempt.error.is_not(None)) | DeliveryAttempt.status_code.is_(None) | ~ok
            )
        )
        or 0
    )
