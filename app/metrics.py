"""Prometheus metrics of the API process, served at /metrics."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
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


class SchedulerCollector(Collector):
    """What the scheduler holds back and lets through, read from PostgreSQL at scrape time:
    two grouped counts over jobs and their unfinished shards (indexed by status)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from app.db import session_scope
        from app.services import scheduler

        waiting = GaugeMetricFamily(
            "modelfarm_jobs_waiting",
            "Jobs with work not yet released to the broker (queued, or shards held back)",
            labels=["tenant", "queue"],
        )
        flight = GaugeMetricFamily(
            "modelfarm_shards_in_flight",
            "Shards released to the broker and not finished, per pool (at most its window)",
            labels=["queue"],
        )
        try:
            with session_scope() as session:
                for tenant, queue, jobs in scheduler.waiting_jobs(session):
                    waiting.add_metric([tenant, queue], jobs)
                for queue, shards in scheduler.shards_in_flight(session):
                    flight.add_metric([queue], shards)
        except Exception:  # /metrics must answer even when the database does not
            return
        yield waiting
        yield flight


registry.register(JobStatusCollector())
registry.register(SchedulerCollector())


def exposition() -> bytes:
    """The text a scrape reads. With several API processes (`modelfarm api` sets
    PROMETHEUS_MULTIPROC_DIR for them) every process writes its figures to that folder, and
    whichever process answers sums them all."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(registry)
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)
    combined.register(JobStatusCollector())
    combined.register(SchedulerCollector())
    return generate_latest(combined)
