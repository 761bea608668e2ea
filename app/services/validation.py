"""A model version's validation: `validating -> ready | failed`, durable like a job.

Every change is a conditional UPDATE on the version's status (and lease), so a duplicated or
late validation task can neither make a failed version ready nor undo a ready one. An attempt
holds a lease of MODEL_VALIDATION_SECONDS plus a margin (the task is stopped before it lapses);
the sweeper publishes again what has no live message or whose attempt died, and an attempt past
MAX_ATTEMPTS fails the version instead of trying a file that kills its worker forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.models import File, Model, ModelVersion, VersionStatus

NOW = func.statement_timestamp()  # PostgreSQL's clock: leases are compared on many hosts

LEASE_MARGIN_SECONDS = 60  # beyond the task's own time limit: the lease outlives the attempt


@dataclass(frozen=True)
class ValidationClaim:
    """What one validation attempt needs, read when it took the version."""

    version_id: str
    tenant_id: str
    name: str
    version: int
    framework: str
    task: str | None
    upload_uri: str | None  # the tenant's uploaded file
    attempt: int
    #: the version has just failed (attempts spent, upload gone): nothing to check, only the
    #: folders of earlier attempts (dead ones: their leases are gone) to clear away
    ended: bool = False
    #: what the version's jobs run at unless they choose; it must be offered to be ready
    default_precision: str = "fp32"


def lease_owner(session: Session, version_id: str) -> str | None:
    """Which attempt took the version last, its lease live or run out (None: none holds it;
    an attempt that ended gives it up)."""
    return session.scalar(select(ModelVersion.lease_owner).where(ModelVersion.id == version_id))


def claim_validation(
    session: Session,
    version_id: str,
    owner: str,
    lease_seconds: float,
    max_attempts: int,
    take_over: str | None = None,
) -> ValidationClaim | None:
    """Take a validating version for one attempt; None when there is nothing to do (ready or
    failed already, another attempt's lease is live). A claim that is `ended` has just failed
    the version (attempts spent, or the upload deleted).

    `take_over` names a lease owner known to be dead (a killed pool child whose message came
    back at once): its lease is taken without waiting for it to run out.
    """
    free = (ModelVersion.lease_expires_at.is_(None)) | (ModelVersion.lease_expires_at < NOW)
    if take_over is not None:
        free = free | (ModelVersion.lease_owner == take_over)
    attempts = session.scalar(
        update(ModelVersion)
        .where(
            ModelVersion.id == version_id,
            ModelVersion.status == VersionStatus.VALIDATING,
            free,
        )
        .values(
            attempts=ModelVersion.attempts + 1,
            lease_owner=owner,
            lease_expires_at=NOW + timedelta(seconds=lease_seconds + LEASE_MARGIN_SECONDS),
        )
        .returning(ModelVersion.attempts)
    )
    if attempts is None:
        return None
    row = session.execute(
        select(ModelVersion, Model.tenant_id, Model.name, File.uri)
        .join(Model, Model.id == ModelVersion.model_id)
        .outerjoin(File, File.id == ModelVersion.file_id)
        .where(ModelVersion.id == version_id)
    ).one()
    mv, tenant_id, name, upload_uri = row
    ended = True
    if attempts > max_attempts:
        fail_validation(
            session,
            version_id,
            "validation_failed",
            f"validation was tried {max_attempts} times and never finished "
            "(its worker died or ran out of time)",
        )
    elif upload_uri is None:  # the tenant deleted the upload before a worker read it
        fail_validation(
            session, version_id, "invalid_model", "the uploaded file was deleted before validation"
        )
    else:
        ended = False
    return ValidationClaim(
        version_id=mv.id,
        tenant_id=tenant_id,
        name=name,
        version=mv.version,
        framework=mv.framework,
        task=mv.task,
        upload_uri=upload_uri,
        attempt=attempts,
        ended=ended,
        default_precision=str((mv.info or {}).get("default_precision", "fp32")),
    )


def finish_validation(
    session: Session, version_id: str, task: str, uri: str, info: dict[str, Any]
) -> bool:
    """validating -> ready, pointing at what this attempt stored; False if it was not ours."""
    row = session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == version_id, ModelVersion.status == VersionStatus.VALIDATING)
        .values(
            status=VersionStatus.READY,
            task=task,
            uri=uri,
            info=info,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(ModelVersion.id)
    ).first()
    return row is not None


def fail_validation(session: Session, version_id: str, code: str, message: str) -> bool:
    """validating -> failed with the reason; False if the version had left validating."""
    row = session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == version_id, ModelVersion.status == VersionStatus.VALIDATING)
        .values(
            status=VersionStatus.FAILED,
            error={"code": code, "message": message},
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(ModelVersion.id)
    ).first()
    return row is not None


def undispatch(session: Session, version_id: str) -> None:
    """The broker refused the message: no dispatch time, so the sweeper publishes it."""
    session.execute(
        update(ModelVersion).where(ModelVersion.id == version_id).values(dispatched_at=None)
    )


def validating(session: Session, limit: int) -> list[tuple[str, datetime | None, datetime | None]]:
    """(version id, dispatched_at, lease_expires_at) of versions still validating, oldest first;
    the sweeper decides from these and the broker's messages which to publish again."""
    grace = NOW - timedelta(seconds=2)  # the API publishes just after it commits
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.dispatched_at, ModelVersion.lease_expires_at)
        .where(ModelVersion.status == VersionStatus.VALIDATING, ModelVersion.created_at < grace)
        .order_by(ModelVersion.created_at)
        .limit(limit)
    ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def mark_dispatched(session: Session, version_id: str, when: datetime) -> None:
    session.execute(
        update(ModelVersion).where(ModelVersion.id == version_id).values(dispatched_at=when)
    )
