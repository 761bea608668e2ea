from __future__ import annotations

from datetime import date

from pydantic import BaseModel


class UsagePublic(BaseModel):
    """One group of a tenant's jobs; the fields it is not grouped by are null."""

    date: date | None
    model: str | None
    job_type: str | None
    jobs: int
    items: int
    failed_items: int
    tokens: int  # not recorded yet: 0
    cpu_seconds: float
    gpu_seconds: float


class UsageList(BaseModel):
    data: list[UsagePublic]
