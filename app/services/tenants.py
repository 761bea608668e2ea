"""Tenants and their limits; the quotas checked when a tenant submits a job or uploads a file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Text, cast, func, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import File, Job, JobStatus, Model, ModelVersion, Tenant
from app.models.job import ACTIVE_STATUSES
from app.services.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    StorageQuotaExceeded,
)

# Keys live in app/services/keys.py; these names are imported from here by older callers.
from app.services.keys import (  # noqa: F401
    KEY_PREFIX,
    authenticate,
    create_api_key,
    forget_keys,
    hash_key,
    known_key,
)

#: the limits `tenants create|set` manage; NULL means none
LIMITS = ("rate_limit", "rate_burst", "max_queued_jobs", "max_running_jobs", "max_storage_bytes")


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """`keys create --tenant NAME` for a new name: a tenant with no limits."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def get_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"no tenant {name!r}")
    return tenant


def create_tenant(session: Session, name: str, limits: dict[str, Any]) -> Tenant:
    if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
        raise Conflict(f"tenant {name} exists already (change its limits with `tenants set`)")
    tenant = Tenant(name=name)
    session.add(tenant)
    set_limits(session, tenant, limits)
    return tenant


def set_limits(session: Session, tenant: Tenant, limits: dict[str, Any]) -> None:
    """Set the limits given (None clears one); the others are left as they are."""
    for name, value in limits.items():
        if name not in LIMITS:
            raise InvalidRequest(f"{name} is not a tenant limit")
        if value is not None and (value < 0 or (name == "rate_limit" and value == 0)):
            raise InvalidRequest(f"{name} must be {'above' if name == 'rate_limit' else 'at'} 0")
        setattr(tenant, name, value)
    session.flush()
    if "max_running_jobs" in limits:  # a higher cap (or none) lets held jobs start now
        from app.services.admission import release_after_commit  # it imports this module

        release_after_commit(session, tenant.id)


def set_disabled(session: Session, tenant: Tenant, disabled: bool) -> None:
    if disabled and tenant.disabled_at is None:
        tenant.disabled_at = utcnow()
    elif not disabled:
        tenant.disabled_at = None
    session.flush()


@dataclass(frozen=True)
class TenantUse:
    tenant: Tenant
    queued_jobs: int
    running_jobs: int  # running or cancelling: a worker still holds them
    storage_bytes: int


def list_tenants(session: Session) -> list[TenantUse]:
    """Every tenant with its current use, by name."""
    jobs: dict[tuple[str, str], int] = {
        (tenant_id, status): count
        for tenant_id, status, count in session.execute(
            select(Job.tenant_id, Job.status, func.count())
            .where(Job.status.in_([s.value for s in ACTIVE_STATUSES]))
            .group_by(Job.tenant_id, Job.status)
        )
    }
    stored = dict(
        session.execute(select(File.tenant_id, func.sum(File.bytes)).group_by(File.tenant_id))
        .tuples()
        .all()
    )
    return [
        TenantUse(
            tenant=tenant,
            queued_jobs=jobs.get((tenant.id, JobStatus.QUEUED), 0),
            running_jobs=jobs.get((tenant.id, JobStatus.RUNNING), 0)
            + jobs.get((tenant.id, JobStatus.CANCELLING), 0),
            storage_bytes=int(stored.get(tenant.id) or 0),
        )
        for tenant in session.scalars(select(Tenant).order_by(Tenant.name))
    ]


def tenant_cap() -> ScalarSelect[int | None]:
    """The job's tenant's running-jobs cap, a scalar subquery correlated to the job row."""
    return select(Tenant.max_running_jobs).where(Tenant.id == Job.tenant_id).scalar_subquery()


def uncapped() -> ColumnElement[bool]:
    """The job's tenant has no running-jobs cap: a claim of it needs no admission
    (app/services/admission.py), so that tenant pays nothing for the cap of others."""
    return tenant_cap().is_(None)


#: session.info key: {tenant id: jobs this session prepared and did not write yet}; a group
#: commit prepares a batch on one session (app/api/submissions.py), and each counts those before
PREPARED_JOBS = "modelfarm_prepared_jobs"


def check_job_quota(session: Session, tenant: Tenant) -> None:
    """Refuse a new job while the tenant has `max_queued_jobs` unfinished ones, counting the
    jobs of the same group commit prepared before this one (`count_prepared`).

    Counted before its rows are written: two group commits of one tenant in flight at once (a
    committer thread each, API processes side by side) may each see room, so the limit can be
    passed by the submissions of one batch per committer at most.
    """
    limit = tenant.max_queued_jobs
    if limit is None:
        return
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant.id, Job.status.in_([s.value for s in ACTIVE_STATUSES]))
    )
    active = (active or 0) + session.info.get(PREPARED_JOBS, {}).get(tenant.id, 0)
    if active >= limit:
        raise QuotaExceeded(
            f"tenant {tenant.name} has {active} jobs queued or running; its limit is {limit} "
            "(max_queued_jobs)"
        )


def count_prepared(session: Session, tenant_id: str) -> None:
    """One more job of the tenant prepared on `session` and not written yet: the next
    submission's quota counts it."""
    prepared = session.info.setdefault(PREPARED_JOBS, {})
    prepared[tenant_id] = prepared.get(tenant_id, 0) + 1


def storage_room(session: Session, tenant: Tenant) -> int | None:
    """Bytes the tenant may still upload (None: no limit); refuses when there are none."""
    limit = tenant.max_storage_bytes
    if limit is None:
        return None
    used = storage_used(session, tenant.id)
    if used >= limit:
        raise storage_exceeded(tenant, used)
    return limit - used


def storage_used(session: Session, tenant_id: str) -> int:
    """Bytes the tenant stores: its files (uploads, inline items, results), the unpacked
    copies of its model versions (an archive of 322 KB unpacked to 301 MB: issue 25), which
    validation records in the version's info as `stored_bytes`, and its jobs' metadata (as
    JSON text: `metadata_bytes`)."""
    files = select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
    versions = (
        select(func.coalesce(func.sum(ModelVersion.info["stored_bytes"].as_integer()), 0))
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.tenant_id == tenant_id, ModelVersion.uri.is_not(None))
    )
    meta = select(func.coalesce(func.sum(func.octet_length(cast(Job.meta, Text))), 0)).where(
        Job.tenant_id == tenant_id
    )
    total = files.scalar_subquery() + versions.scalar_subquery() + meta.scalar_subquery()
    return int(session.scalar(select(total)) or 0)


def metadata_bytes(metadata: dict[str, str]) -> int:
    """A job's metadata as `storage_used` counts it: PostgreSQL's text of the JSON document,
    which is Python's default JSON with the characters left as they are (UTF-8)."""
    return len(json.dumps(metadata, ensure_ascii=False).encode()) if metadata else 0


def check_storage(session: Session, tenant: Tenant, size: int, what: str) -> None:
    """Refuse `size` more bytes (`what`: "this file", say) past the tenant's storage limit."""
    room = storage_room(session, tenant)
    if room is not None and size > room:
        used = (tenant.max_storage_bytes or 0) - room
        raise storage_exceeded(tenant, used, what)


def storage_exceeded(tenant: Tenant, used: int, what: str | None = None) -> StorageQuotaExceeded:
    limit = f"{tenant.max_storage_bytes} bytes (max_storage_bytes)"
    if what:
        return StorageQuotaExceeded(
            f"tenant {tenant.name} stores {used} bytes; {what} would pass its limit of {limit}"
        )
    return StorageQuotaExceeded(f"tenant {tenant.name} stores {used} bytes; its limit is {limit}")
