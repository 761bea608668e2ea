"""Prometheus metrics of the API process, served at /metrics: the farm's state read at scrape
time from the services and the broker, beside the counters of `app/counters.py`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.broker import dispatch
from app.config import get_settings
from app.counters import registry

log = logging.getLogger(__name__)


class FarmCollector(Collector):
    """The farm's state, read at scrape time from PostgreSQL (the source of truth) and the
    broker, so any API process answers the same figures and workers export nothing.
    A failing source drops its own families only: /metrics answers even when the database or
    the broker does not."""

    def collect(self) -> Iterator[Metric]:
        yield from _database_families()
        depths = dispatch.queue_depths()
        if depths is not None:
            gauge = GaugeMetricFamily(
                "modelfarm_queue_depth", "Task messages waiting in a broker queue", labels=["queue"]
            )
            for queue, depth in depths.items():
                gauge.add_metric([queue], depth)
            yield gauge


def _database_families() -> list[Metric]:
    from app.services import farm_stats
    from app.unit_of_work import session_scope

    try:
        with session_scope() as session:
            farm_stats.cap_time(session)
            statuses = farm_stats.jobs_by_status(session)
            workers = farm_stats.live_workers(session)
            items = farm_stats.items_processed(session, get_settings().metrics_model_names)
            tokens = farm_stats.tokens_processed(session, get_settings().metrics_model_names)
            durations = farm_stats.job_durations(session)
            backlog = farm_stats.webhook_backlog(session)
            failures = farm_stats.webhook_failures(session)
    except Exception:
        log.warning("metrics: could not read the database", exc_info=True)
        return []
    jobs = GaugeMetricFamily("modelfarm_jobs", "Jobs by status", labels=["status"])
    for status, count in statuses.items():
        jobs.add_metric([status], count)
    pools = GaugeMetricFamily(
        "modelfarm_workers", "Workers of a pool alive by heartbeat", labels=["pool"]
    )
    for pool, count in workers.items():
        pools.add_metric([pool], count)
    processed = CounterMetricFamily(
        "modelfarm_items_processed",
        "Input items with an output line (succeeded) or an error line (failed)",
        labels=["model", "outcome"],
    )
    for (model, outcome), count in items.items():
        processed.add_metric([model, outcome], count)
    token_counts = CounterMetricFamily(
        "modelfarm_tokens",
        "Tokens text models read (for text generation: the prompts), per model, as shards end",
        labels=["model"],
    )
    generated = CounterMetricFamily(
        "modelfarm_generated_tokens",
        "Tokens text-generation models wrote (completions), per model, as shards end",
        labels=["model"],
    )
    for model, (read, wrote) in tokens.items():
        token_counts.add_metric([model], read)
        if wrote:
            generated.add_metric([model], wrote)
    histogram = HistogramMetricFamily(
        "modelfarm_job_duration_seconds",
        "Finished jobs: seconds from start to end, by type and final status",
        labels=["type", "outcome"],
    )
    for row in durations:
        buckets = [
            (f"{b:g}", c) for b, c in zip(farm_stats.DURATION_BUCKETS, row.buckets, strict=True)
        ]
        histogram.add_metric(
            [row.type, row.outcome], [*buckets, ("+Inf", row.count)], sum_value=row.sum
        )
    waiting = GaugeMetricFamily(
        "modelfarm_webhook_backlog", "Webhook deliveries pending or being attempted"
    )
    waiting.add_metric([], backlog)
    failed = CounterMetricFamily(
        "modelfarm_webhook_failures", "Webhook delivery attempts that got no 2xx answer"
    )
    failed.add_metric([], failures)
    return [jobs, pools, processed, token_counts, generated, histogram, waiting, failed]


#: Every family the farm exports (what the Grafana dashboard may use; a unit test checks it).
FAMILIES = (
    "modelfarm_http_request_duration_seconds",
    "modelfarm_jobs_submitted_total",
    "modelfarm_job_publish_failures_total",
    "modelfarm_jobs",
    "modelfarm_workers",
    "modelfarm_queue_depth",
    "modelfarm_items_processed_total",
    "modelfarm_tokens_total",
    "modelfarm_generated_tokens_total",
    "modelfarm_job_duration_seconds",
    "modelfarm_webhook_backlog",
    "modelfarm_webhook_failures_total",
    "modelfarm_jobs_waiting",
    "modelfarm_shards_in_flight",
    "modelfarm_jobs_held",
)


class SchedulerCollector(Collector):
    """What the scheduler holds back and lets through, read from PostgreSQL at scrape time:
    grouped counts over jobs and their unfinished shards (indexed by status)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from app.services import admission, scheduler
        from app.unit_of_work import session_scope

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
        held = GaugeMetricFamily(
            "modelfarm_jobs_held",
            "Queued jobs held back by their tenant's max_running_jobs (counted in jobs_waiting)",
            labels=["tenant", "queue"],
        )
        try:
            with session_scope() as session:
                for tenant, queue, jobs in scheduler.waiting_jobs(session):
                    waiting.add_metric([tenant, queue], jobs)
                for queue, shards in scheduler.shards_in_flight(session):
                    flight.add_metric([queue], shards)
                for tenant, queue, jobs in admission.held_jobs(session):
                    held.add_metric([tenant, queue], jobs)
        except Exception:  # /metrics must answer even when the database does not
            return
        yield waiting
        yield flight
        yield held


registry.register(FarmCollector())
registry.register(SchedulerCollector())


def exposition() -> bytes:
    """The text a scrape reads. With several API processes (`modelfarm api` sets
    PROMETHEUS_MULTIPROC_DIR for them) every process writes its figures to that folder, and
    whichever process answers sums them all."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(registry)
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]  # unannotated
    combined.register(FarmCollector())
    combined.register(SchedulerCollector())
    return generate_latest(combined)
