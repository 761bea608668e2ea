"""One webhook delivery attempt: claim the row, check the address, sign, POST, record.

Runs on the `webhooks` queue in its own worker (threads: it waits on receivers, not on the
CPU). No redirect is followed (a 3xx is a failed attempt), 410 Gone stops the delivery, and a
`Retry-After` answer sets the time of the next attempt.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from app.broker.dispatch import MAX_COUNTDOWN_SECONDS
from app.config import get_settings
from app.db import utcnow
from app.services import webhooks
from app.unit_of_work import session_scope
from app.urlguard import Allowlist, CheckedURL, RefusedURL, check_url
from workers.reliability import db_retry, new_owner

log = logging.getLogger(__name__)

USER_AGENT = "modelfarm-webhooks/1"


def deliver(job_id: str, delivery_id: str) -> None:
    settings = get_settings()
    owner = new_owner()
    # httpx applies the timeout per phase (connect, write, read), so an attempt may take a
    # few times it; past this lease the sweeper takes the delivery back.
    lease = 4 * settings.webhook_timeout_seconds + 5.0
    claimed = db_retry(_claim, delivery_id, owner, lease)
    if claimed is None:  # not due, already sent, or another worker holds it
        return
    outcome = attempt(
        claimed,
        Allowlist.parse(settings.webhook_allowed_hosts),
        settings.webhook_timeout_seconds,
    )
    db_retry(_record, claimed, owner, outcome, settings.retry_delays())
    log.info(
        "delivery %s (job %s, %s) attempt %d: %s",
        delivery_id,
        job_id,
        claimed.webhook_id,
        claimed.attempt,
        outcome.status_code or outcome.error,
    )


def _claim(delivery_id: str, owner: str, lease: float) -> webhooks.Claimed | None:
    with session_scope() as session:
        return webhooks.claim(session, delivery_id, owner, lease)


def _record(
    claimed: webhooks.Claimed, owner: str, outcome: webhooks.Outcome, delays: list[float]
) -> None:
    """The attempt and what follows; a next attempt due soon enough is sent with its countdown
    once this commits (marked dispatched with it, the mark taken back if the broker refuses);
    a later one is the sweeper's to send when due."""
    with session_scope() as session:
        delay = webhooks.record_attempt(session, claimed, owner, outcome, delays)
        if delay is not None and delay <= MAX_COUNTDOWN_SECONDS:
            webhooks.mark_dispatched(session, claimed.delivery_id)
            webhooks.send(session, claimed.job_id, claimed.delivery_id, countdown=delay)


def attempt(claimed: webhooks.Claimed, allowlist: Allowlist, timeout: float) -> webhooks.Outcome:
    started, clock = utcnow(), time.monotonic()

    def outcome(**kwargs: object) -> webhooks.Outcome:
        duration = int((time.monotonic() - clock) * 1000)
        return webhooks.Outcome(started_at=started, duration_ms=duration, **kwargs)  # type: ignore[arg-type]

    try:
        target = check_url(claimed.url, allowlist)  # again: the name may point elsewhere now
    except RefusedURL as exc:
        return outcome(error=f"refused: {exc}")
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **webhooks.sign(claimed.secrets, claimed.webhook_id, datetime.now(UTC), claimed.body),
    }
    try:
        response = _post(target, claimed.body.encode(), headers, timeout)
    except httpx.TimeoutException:
        return outcome(error=f"timed out after {timeout:g}s")
    except httpx.HTTPError as exc:
        return outcome(error=f"{type(exc).__name__}: {exc}"[:1000])
    error = None
    if not 200 <= response.status_code < 300:
        error = f"HTTP {response.status_code}"
        if 300 <= response.status_code < 400:
            error += " (redirects are not followed)"
    return outcome(
        status_code=response.status_code,
        error=error,
        retry_after=retry_after(response.headers.get("retry-after")),
    )


def _post(
    target: CheckedURL, body: bytes, headers: dict[str, str], timeout: float
) -> httpx.Response:
    """POST to an address the guard checked, keeping the name for Host, SNI and certificates."""
    parts = urlsplit(target.url)
    host_header = parts.netloc.rpartition("@")[2]
    last_error: httpx.HTTPError | None = None
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for address in target.addresses:
            literal = f"[{address}]" if ":" in address else address
            url = urlunsplit(
                (parts.scheme, f"{literal}:{target.port}", parts.path or "/", parts.query, "")
            )
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            request = client.build_request(
                "POST",
                url,
                content=body,
                headers={**headers, "host": host_header},
                extensions=extensions,
            )
            try:
                # Only the status and headers matter: the body is never read, however large.
                response = client.send(request, stream=True)
                response.close()
                return response
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # the next address
                last_error = exc
    assert last_error is not None
    raise last_error


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
