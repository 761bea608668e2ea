"""Webhook deliveries as an outbox: rows written in the transaction of the transition they report.

A delivery row is inserted by the same transaction that moves the job, so a crash can never
leave a finished job without its callback. Its id is published to the `webhooks` queue only
after that transaction commits (queued on its unit of work: app/unit_of_work.py); a lost
message is found again by the sweeper. Attempts are claimed with a conditional UPDATE, so a
duplicated message sends nothing twice at once. Every time a lease, a due time or a dispatch
is written or compared with is PostgreSQL's (`statement_timestamp()`, `database_clock()`):
the API, the workers and the sweeper may run on hosts whose clocks disagree.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from app.broker.dispatch import TASK_DELIVER_WEBHOOK, WEBHOOK_QUEUE
from app.config import get_settings
from app.db import database_clock
from app.models import Delivery, DeliveryAttempt, DeliveryStatus, Job, Tenant, WebhookSecret
from app.services.errors import Conflict, NotFound
from app.unit_of_work import Message, send_after_commit

ROTATION_OVERLAP = timedelta(hours=24)  # an old secret keeps signing this long after a rotation
PROGRESS_INTERVAL = timedelta(seconds=1)  # at most one job.progress a second per job
MAX_RETRY_AFTER = 24 * 3600.0
EVENT_BY_STATUS = {
    "running": "job.started",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
NOW = func.statement_timestamp()  # PostgreSQL's clock, in a statement


# Secrets ------------------------------------------------------------------------------------


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def signing_secrets(session: Session, tenant_id: str) -> list[str]:
    """Every secret that signs now, newest first; the tenant's first one is made on demand."""
    rows = list(
        session.scalars(
            select(WebhookSecret.key)
            .where(
                WebhookSecret.tenant_id == tenant_id,
                (WebhookSecret.expires_at.is_(None)) | (WebhookSecret.expires_at > NOW),
            )
            .order_by(WebhookSecret.id.desc())
        )
    )
    if rows:
        return rows
    # Lock the tenant so two first requests agree on one secret.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    current = session.scalar(
        select(WebhookSecret.key).where(
            WebhookSecret.tenant_id == tenant_id, WebhookSecret.expires_at.is_(None)
        )
    )
    if current is None:
        current = _new_secret()
        session.add(WebhookSecret(tenant_id=tenant_id, key=current))
        session.flush()
    return [current]


def current_secret(session: Session, tenant: Tenant) -> str:
    return signing_secrets(session, tenant.id)[0]


def rotate_secret(session: Session, tenant: Tenant) -> str:
    """A new secret signs from now on; the old one signs too for ROTATION_OVERLAP."""
    signing_secrets(session, tenant.id)  # there is a current one to retire
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant.id, WebhookSecret.expires_at.is_(None))
        .values(expires_at=NOW + ROTATION_OVERLAP)
    )
    key = _new_secret()
    session.add(WebhookSecret(tenant_id=tenant.id, key=key))
    session.flush()
    return key


def sign(secrets: Sequence[str], webhook_id: str, when: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers; one `v1,` signature per secret, space separated."""
    signatures = " ".join(Webhook(s).sign(webhook_id, when, body) for s in secrets)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signatures,
    }


# Queueing -----------------------------------------------------------------------------------


def wants(webhook: dict[str, Any] | None, event_type: str) -> bool:
    return bool(webhook) and event_type in (webhook or {}).get("events", ())


def enqueue(
    session: Session,
    job: Job,
    event_type: str,
    data: dict[str, Any],
    event: dict[str, Any] | None = None,
) -> Delivery:
    """Write a delivery of `event_type` for the job's webhook, sent once the caller commits.

    `event`: the whole body when it is not the native `{type, timestamp, data}` (an OpenAI
    batch's event, app/services/openai.py)."""
    assert job.webhook is not None
    now = database_clock()
    body = json.dumps(
        event
        if event is not None
        else {"type": event_type, "timestamp": now.isoformat(), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    delivery = Delivery(
        job_id=job.id,
        tenant_id=job.tenant_id,
        event=event_type,
        url=job.webhook["url"],
        body=body,
        status=DeliveryStatus.PENDING,
        max_attempts=1 + len(get_settings().retry_delays()),
        next_attempt_at=now,
        dispatched_at=now,  # published right after the commit; the sweeper covers a failure
    )
    session.add(delivery)
    session.flush()
    send(session, job.id, delivery.id)
    return delivery


def send(session: Session, job_id: str, delivery_id: str, countdown: float | None = None) -> None:
    """Queue the delivery's message on the unit of work, sent once this commits (in `countdown`
    seconds). Refused by the broker, its dispatch time is taken back: the sweeper sends it."""
    message = Message(
        TASK_DELIVER_WEBHOOK,
        [job_id, delivery_id],
        WEBHOOK_QUEUE,
        countdown=countdown,
        refused=lambda later: undispatch(later, delivery_id),
    )
    send_after_commit(session, message)


def undispatch(session: Session, delivery_id: str) -> None:
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(dispatched_at=None))


def progress_due(session: Session, job_id: str) -> Job | None:
    """The job, when it wants `job.progress` and none was queued in the last second."""
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.webhook.is_not(None),
            (Job.progress_notified_at.is_(None))
            | (Job.progress_notified_at < NOW - PROGRESS_INTERVAL),
        )
        .values(progress_notified_at=NOW)
        .returning(Job.webhook)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None or not wants(row[0], "job.progress"):
        return None
    return session.get_one(Job, job_id, populate_existing=True)


# Attempts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    delivery_id: str
    job_id: str
    webhook_id: str
    url: str
    body: str
    attempt: int
    secrets: list[str]


def claim(session: Session, delivery_id: str, owner: str, lease_seconds: float) -> Claimed | None:
    """Take a due delivery for one attempt; None when it is not due or someone holds it."""
    row = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at <= NOW,
        )
        .values(
            status=DeliveryStatus.SENDING,
            attempt_count=Delivery.attempt_count + 1,
            lease_owner=owner,
            lease_expires_at=NOW + timedelta(seconds=lease_seconds),
        )
        .returning(
            Delivery.job_id,
            Delivery.tenant_id,
            Delivery.webhook_id,
            Delivery.url,
            Delivery.body,
            Delivery.attempt_count,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    job_id, tenant_id, webhook_id, url, body, attempt = row
    secrets = signing_secrets(session, tenant_id)
    return Claimed(delivery_id, job_id, webhook_id, url, body, attempt, secrets)


@dataclass(frozen=True)
class Outcome:
    started_at: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from the receiver's Retry-After

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410


def next_delay(attempt: int, delays: Sequence[float], retry_after: float | None) -> float:
    """Seconds before attempt `attempt + 1`: the receiver's Retry-After, else the schedule."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    base = delays[min(attempt, len(delays)) - 1] if delays else 0.0
    return base * random.uniform(0.9, 1.1)


def record_attempt(
    session: Session, claimed: Claimed, owner: str, outcome: Outcome, delays: Sequence[float]
) -> float | None:
    """Store the attempt and decide what follows; returns the delay of the next attempt."""
    session.add(
        DeliveryAttempt(
            delivery_id=claimed.delivery_id,
            number=claimed.attempt,
            started_at=outcome.started_at,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            error=(outcome.error or "")[:1000] or None,
        )
    )
    delivery = session.scalar(
        select(Delivery).where(Delivery.id == claimed.delivery_id).with_for_update()
    )
    if delivery is None:
        return None
    if delivery.lease_owner != owner:
        # The sweeper took it back meanwhile and another attempt may be under way; a 2xx
        # still counts, so a delivery the receiver took never ends `failed`.
        if outcome.ok and delivery.status != DeliveryStatus.SUCCEEDED:
            delivery.status, delivery.delivered_at = DeliveryStatus.SUCCEEDED, database_clock()
            delivery.next_attempt_at = delivery.lease_owner = delivery.lease_expires_at = None
        return None
    delivery.lease_owner = delivery.lease_expires_at = None
    delivery.last_status_code = outcome.status_code
    delivery.last_error = (outcome.error or "")[:1000] or None
    now = database_clock()
    if outcome.ok:
        delivery.status, delivery.delivered_at = DeliveryStatus.SUCCEEDED, now
        delivery.next_attempt_at = None
        return None
    if outcome.gone or delivery.attempt_count >= delivery.max_attempts:
        delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
        return None
    delay = next_delay(delivery.attempt_count, delays, outcome.retry_after)
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = now + timedelta(seconds=delay)
    return delay


def mark_dispatched(session: Session, delivery_id: str) -> None:
    session.execute(update(Delivery).where(Delivery.id == delivery_id).values(dispatched_at=NOW))


def take_back_expired(session: Session, limit: int) -> list[tuple[str, str]]:
    """Deliveries whose worker died mid-attempt: the attempt is recorded as lost and the
    delivery waits for its next one (or fails when it was the last). Returns those to send."""
    now = database_clock()
    rows = session.scalars(
        select(Delivery)
        .where(Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < NOW)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    sends = []
    for delivery in rows:
        session.add(
            DeliveryAttempt(
                delivery_id=delivery.id,
                number=delivery.attempt_count,
                started_at=now,
                error="the worker stopped during the attempt (no answer was recorded)",
            )
        )
        delivery.lease_owner = delivery.lease_expires_at = None
        if delivery.attempt_count >= delivery.max_attempts:
            delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
            continue
        delivery.status, delivery.next_attempt_at = DeliveryStatus.PENDING, now
        sends.append((delivery.job_id, delivery.id))
    return sends


def due_undispatched(
    session: Session, grace: timedelta, limit: int, resend_after: timedelta | None = None
) -> list[tuple[str, str]]:
    """Pending deliveries due for a while with no recent message: their message was lost, or
    their next attempt was too far off to hand to the broker as a countdown. A message sent
    less than `resend_after` (default: `grace`) ago counts as recent."""
    cutoff = NOW - grace
    sent_before = NOW - (resend_after or grace)
    rows = session.execute(
        select(Delivery.job_id, Delivery.id)
        .where(
            Delivery.status == DeliveryStatus.PENDING,
            Delivery.next_attempt_at < cutoff,
            (Delivery.dispatched_at.is_(None)) | (Delivery.dispatched_at < sent_before),
        )
        .order_by(Delivery.next_attempt_at)
        .limit(limit)
    ).all()
    return [(job_id, delivery_id) for job_id, delivery_id in rows]


# API ----------------------------------------------------------------------------------------


def list_for_job(
    session: Session, job_id: str, *, limit: int = 20, after: str | None = None
) -> tuple[list[Delivery], bool]:
    """A job's deliveries oldest first (ids are time-ordered), `limit` after the id `after`."""
    query = select(Delivery).where(Delivery.job_id == job_id)
    if after is not None:
        known = select(Delivery.id).where(Delivery.job_id == job_id, Delivery.id == after)
        if session.scalar(known) is None:
            raise NotFound(f"no delivery {after!r} of job {job_id}")
        query = query.where(Delivery.id > after)
    rows = list(session.scalars(query.order_by(Delivery.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def redeliver(session: Session, job_id: str, delivery_id: str) -> Delivery:
    """One more attempt now, with the same `webhook-id` and body, whatever came before."""
    delivery = session.scalar(
        select(Delivery)
        .where(Delivery.id == delivery_id, Delivery.job_id == job_id)
        .with_for_update()
    )
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id!r} for job {job_id!r}")
    if delivery.status == DeliveryStatus.SENDING:
        raise Conflict(f"delivery {delivery_id} is being sent now", code="delivery_in_progress")
    now = database_clock()
    if delivery.status != DeliveryStatus.PENDING:
        delivery.max_attempts = delivery.attempt_count + 1
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = delivery.dispatched_at = now
    session.flush()
    send(session, job_id, delivery.id)
    return delivery
