from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


class UsagePublic(BaseModel):
    """One group of a tenant's jobs; the fields it is not grouped by are null."""

    date: dt.date | None = Field(description="The UTC day the jobs were created on.")
    model: str | None = Field(description="The model the jobs ran, `name@version`.")
    job_type: str | None = Field(description="`inference` or `training`.")
    jobs: int = Field(description="Jobs in the group.")
    items: int = Field(description="Items that succeeded, each counted once.")
    failed_items: int = Field(description="Items that ended in the error file.")
    tokens: int = Field(
        description="Tokens the text models read, as each model's tokenizer counts them "
        "(special tokens included; for text generation: the prompts); 0 for scikit-learn models."
    )
    completion_tokens: int = Field(
        default=0, description="Tokens text-generation models wrote (their completions)."
    )
    cpu_seconds: float = Field(description="CPU time of every attempt.")
    gpu_seconds: float = Field(description="GPU time of every attempt.")


class UsageList(BaseModel):
    data: list[UsagePublic] = Field(description="One row per group, ordered by the groups.")
