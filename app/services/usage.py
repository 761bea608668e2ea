"""What a tenant used, summed from the jobs table.

A job counts on the UTC day it was submitted (`created_at`), with what it has recorded so far:
the counts of a running job grow until it ends. Item counts are the job's own, which the farm
keeps as sums over its shards' final counts (a shard that ran twice is counted once); the
seconds in `usage` add every attempt, since a repeated shard did use the machine twice.
Training jobs count as jobs and seconds, not items (their counts are steps). Tokens are what
the text models read, counted by the model's tokenizer as the workers tokenize and recorded by
each shard with its finish (so once, like the item counts); scikit-learn jobs read none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.models import Job, JobType, Tenant
from app.services.errors import InvalidRequest

GROUPS = ("day", "model", "job_type")
DEFAULT_DAYS = 30  # without `from`: the 30 days up to `to`
MAX_DAYS = 3660


@dataclass(frozen=True)
class UsageRow:
    tenant: str | None
    date: date | None
    model: str | None
    job_type: str | None
    jobs: int
    items: int
    failed_items: int
    tokens: int
    completion_tokens: int
    cpu_seconds: float
    gpu_seconds: float


def parse_group_by(text: str | None) -> list[str]:
    """`day`, `model`, `job_type`, or several of them separated by commas."""
    groups = [g.strip() for g in (text or "day").split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or not groups:
        raise InvalidRequest(f"group_by must be {', '.join(GROUPS)} (or several, comma separated)")
    return list(dict.fromkeys(groups))


def date_range(start: date | None, end: date | None) -> tuple[date, date]:
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidRequest(f"from ({start}) is after to ({end})")
    if end >= date.max:  # the day after it is where the range ends
        raise InvalidRequest(f"to must be before {date.max}")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"at most {MAX_DAYS} days at a time")
    return start, end


def usage(
    session: Session,
    tenant: Tenant | None,
    start: date,
    end: date,
    group_by: list[str],
) -> list[UsageRow]:
    """Rows for one tenant (or, with None, for each tenant), `start` to `end` inclusive."""
    day = func.date(func.timezone("UTC", Job.created_at))
    columns: dict[str, Any] = {"day": day, "model": Job.model, "job_type": Job.type}
    keys = [columns[g] for g in group_by]
    if tenant is None:
        keys.insert(0, Tenant.name)
    inference = Job.type == JobType.INFERENCE
    query = (
        select(
            *keys,
            func.count(),
            func.sum(case((inference, Job.counts_succeeded + Job.counts_failed), else_=0)),
            func.sum(case((inference, Job.counts_failed), else_=0)),
            func.sum(func.coalesce(Job.usage["tokens"].as_integer(), 0)),
            func.sum(func.coalesce(Job.usage["completion_tokens"].as_integer(), 0)),
            func.sum(_seconds("cpu_seconds")),
            func.sum(_seconds("gpu_seconds")),
        )
        .where(
            Job.created_at >= datetime.combine(start, time(), UTC),
            Job.created_at < datetime.combine(end + timedelta(days=1), time(), UTC),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
    if tenant is None:
        query = query.join(Tenant, Tenant.id == Job.tenant_id)
    else:
        query = query.where(Job.tenant_id == tenant.id)
    rows = []
    for row in session.execute(query):
        values = list(row)
        named = {"tenant": values.pop(0) if tenant is None else None}
        named |= {g: values.pop(0) for g in group_by}
        jobs, items, failed, tokens, completion, cpu, gpu = values
        rows.append(
            UsageRow(
                tenant=named["tenant"],
                date=named.get("day"),
                model=named.get("model"),
                job_type=named.get("job_type"),
                jobs=int(jobs),
                items=int(items or 0),
                failed_items=int(failed or 0),
                tokens=int(tokens or 0),
                completion_tokens=int(completion or 0),
                cpu_seconds=round(float(cpu or 0), 3),
                gpu_seconds=round(float(gpu or 0), 3),
            )
        )
    return rows


def _seconds(name: str) -> Any:
    return func.coalesce(Job.usage[name].as_float(), 0.0)
