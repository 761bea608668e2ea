"""How a job reads as an OpenAI batch (app/services/openai.py): status map, times, counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.models import Job
from app.services.batches import batch_event
from app.services.openai import batch_public

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _job(status: str, **values: object) -> Job:
    fields: dict[str, object] = {
        "id": "job_x",
        "tenant_id": "ten_x",
        "type": "inference",
        "status": status,
        "model": "minilm@1",
        "device": "cpu",
        "queue": "cpu",
        "input_file_id": "file_in",
        "params": {"format": "openai", "endpoint": "/v1/embeddings", "completion_window": "24h"},
        "meta": {"k": "v"},
        "counts_total": 10,
        "counts_succeeded": 4,
        "counts_failed": 1,
        "created_at": CREATED,
        "deadline_at": CREATED + timedelta(hours=24),
    }
    fields.update(values)
    return Job(**fields)


ENDED = CREATED + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("status", "extra", "expected", "time_field"),
    [
        ("queued", {}, "validating", None),
        ("running", {"started_at": CREATED}, "in_progress", "in_progress_at"),
        ("running", {"counts_succeeded": 9}, "finalizing", None),
        ("running", {"assembling_at": ENDED}, "finalizing", "finalizing_at"),
        ("succeeded", {"finished_at": ENDED}, "completed", "completed_at"),
        (
            "failed",
            {"finished_at": ENDED, "error": {"code": "c", "message": "m"}},
            "failed",
            "failed_at",
        ),
        ("cancelling", {"cancel_requested_at": ENDED}, "cancelling", "cancelling_at"),
        ("cancelled", {"finished_at": ENDED}, "cancelled", "cancelled_at"),
        (
            "cancelled",
            {"finished_at": ENDED, "error": {"code": "deadline_exceeded", "message": "m"}},
            "expired",
            "expired_at",
        ),
    ],
)
def test_job_status_reads_as_openais(
    status: str, extra: dict[str, object], expected: str, time_field: str | None
) -> None:
    batch = batch_public(_job(status, **extra))
    assert batch.status == expected
    assert batch.created_at == int(CREATED.timestamp())
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.endpoint == "/v1/embeddings" and batch.completion_window == "24h"
    assert batch.metadata == {"k": "v"}
    if time_field is not None:
        assert batch.model_dump().get(time_field) is not None
    if expected == "failed":
        assert batch.errors is not None and batch.errors.data[0].code == "c"


def test_counts_usage_and_events() -> None:
    batch = batch_public(_job("running"))
    assert batch.request_counts.model_dump() == {"total": 10, "completed": 4, "failed": 1}
    assert batch.usage.total_tokens == 0  # no shard closed yet
    used = batch_public(_job("succeeded", usage={"cpu_seconds": 1.5, "tokens": 42}))
    assert used.usage.model_dump() == {
        "input_tokens": 42,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 42,
    }
    # A chat batch: prompts read apart from completions written.
    chat = {"cpu_seconds": 1.5, "tokens": 42, "completion_tokens": 17}
    usage = batch_public(_job("succeeded", usage=chat)).usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (42, 17, 59)
    done = batch_event(_job("succeeded"), "job.succeeded")
    assert done is not None and done[0] == "batch.completed"
    assert done[1]["object"] == "event" and done[1]["data"] == {"id": "job_x"}
    expired = _job("cancelled", error={"code": "deadline_exceeded", "message": "m"})
    assert batch_event(expired, "job.cancelled") is not None
    assert batch_event(expired, "job.cancelled")[0] == "batch.expired"  # type: ignore[index]
    assert batch_event(_job("running"), "job.started") is None


def test_every_field_the_clients_types_name_is_served() -> None:
    """The objects' fields are those of the pinned `openai` package's types, none missing."""
    from openai.types import Batch, FileDeleted, FileObject, Model
    from openai.types.batch_request_counts import BatchRequestCounts
    from openai.types.batch_usage import BatchUsage

    from app.schemas import openai as oa

    pairs = [
        (Batch, oa.OpenAIBatch),
        (BatchRequestCounts, oa.RequestCounts),
        (BatchUsage, oa.BatchUsage),
        (FileObject, oa.OpenAIFile),
        (FileDeleted, oa.OpenAIFileDeleted),
        (Model, oa.OpenAIModel),
    ]
    for theirs, ours in pairs:
        assert set(theirs.model_fields) <= set(ours.model_fields), theirs.__name__
