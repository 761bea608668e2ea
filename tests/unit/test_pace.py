"""A running job's rate and ETA, as the API, the CLI's bar and /ui show them."""

from __future__ import annotations

import re
from datetime import timedelta

from app.api.ui import templates
from app.cli.client import pace_words
from app.config import Settings
from app.db import utcnow
from app.models import Job, JobStatus
from app.services.pace import pace


def _job(status: JobStatus, done: int, total: int, seconds: float | None) -> Job:
    started = None if seconds is None else utcnow() - timedelta(seconds=seconds)
    return Job(
        id="job_x", status=status, counts_total=total, counts_succeeded=done, counts_failed=0,
        started_at=started,
    )  # fmt: skip


def test_a_running_job_has_a_rate_and_an_eta() -> None:
    now = utcnow()
    job = _job(JobStatus.RUNNING, 300, 1000, None)
    job.started_at = now - timedelta(seconds=10)
    assert pace(job, now) == {"items_per_second": 30.0, "eta_seconds": 23.3}
    assert pace(_job(JobStatus.RUNNING, 0, 1000, 5), now)["eta_seconds"] is None  # type: ignore[index]
    assert pace(_job(JobStatus.SUCCEEDED, 1000, 1000, 10)) is None
    assert pace(_job(JobStatus.QUEUED, 0, 1000, None)) is None


def test_the_cli_bar_and_the_console_say_rate_and_eta() -> None:
    assert pace_words({"items_per_second": 30.0, "eta_seconds": 83.4}) == "30 items/s, ETA 0:01:23"
    assert pace_words({"items_per_second": 0.0, "eta_seconds": None}) == "0 items/s"
    assert pace_words(None) == ""
    page = templates.env.from_string('{% import "_macros.html" as m %}{{ m.progress(job) }}')
    running = page.render(job=_job(JobStatus.RUNNING, 300, 1000, 10))
    # The page reads the clock as it renders: on a loaded machine a moment has passed since the
    # job was made, so the rate is at most 30 items/s and the ETA at least 23 s.
    shown = re.search(r"([\d.]+) items/s · ETA (\d+) s", running)
    assert shown is not None, running
    assert 25 <= float(shown[1]) <= 30 and 23 <= int(shown[2]) <= 28, shown[0]
    assert "items/s" not in page.render(job=_job(JobStatus.SUCCEEDED, 1000, 1000, 10))


def test_counts_are_recorded_every_few_hundred_items_by_default() -> None:
    fields = Settings.model_fields  # the defaults, whatever this process's environment says
    assert fields["chunk_items"].default <= 512 and fields["progress_seconds"].default <= 1.0
