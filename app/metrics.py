"""Prometheus metrics of the API process, served at /metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

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


class JobStatusCollector(Collector):
    """Jobs per status, read from PostgreSQL at scrape time (the source of truth)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from app.db import session_scope
        from app.models import Job

        gauge = GaugeMetricFamily("modelfarm_jobs", "Jobs by status", labels=["status"])
        try:
            with session_scope() as session:
                rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
                for status, count in rows:
                    gauge.add_metric([status], count)
        except Exception:  # /metrics must answer even when the database does not
            return
        yield gauge


registry.register(JobStatusCollector())
