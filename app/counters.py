"""The counters the API and the services count into: a leaf of the app (it imports nothing of
it), so any module may count. What is read at scrape time, and the text a scrape reads, are in
`app/api/metrics.py`, above the services it reads."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

registry = CollectorRegistry()

HTTP_REQUESTS = Histogram(
    "modelfarm_http_request_duration_seconds",
    "HTTP requests by route and status",
    ["method", "route", "status"],
    registry=registry,
)
JOBS_SUBMITTED = Counter(
    "modelfarm_jobs_submitted_total",
    "Jobs accepted by the API",
    ["type", "queue"],
    registry=registry,
)
JOBS_PUBLISH_FAILED = Counter(
    "modelfarm_job_publish_failures_total",
    "Jobs committed but not handed to the broker",
    registry=registry,
)

# Requests refused by a tenant limit, by the error code they were answered with.
REJECTION_REASONS = ("rate_limited", "quota_exceeded")
REJECTED_REQUESTS = Counter(
    "modelfarm_rejected_requests_total",
    "Requests refused by a tenant's rate limit or quota",
    ["reason"],
    registry=registry,
)
for _reason in REJECTION_REASONS:  # shown at 0 from the start, so a rate() has a baseline
    REJECTED_REQUESTS.labels(_reason)
