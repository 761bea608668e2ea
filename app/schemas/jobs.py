from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

JobTypeName = Literal["inference", "training"]
Device = Literal["cpu", "gpu", "auto"]
WebhookEvent = Literal[
    "job.started", "job.progress", "job.succeeded", "job.failed", "job.cancelled"
]
TERMINAL_EVENTS: tuple[WebhookEvent, ...] = ("job.succeeded", "job.failed", "job.cancelled")


class InlineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str | int | None = None
    input: Any


class JobInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_id: str | None = None
    items: list[InlineItem] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> JobInput:
        if (self.file_id is None) == (self.items is None):
            raise ValueError("give exactly one of input.file_id and input.items")
        if self.items is not None and not self.items:
            raise ValueError("input.items is empty")
        return self


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: HttpUrl
    events: list[WebhookEvent] = Field(default_factory=lambda: list(TERMINAL_EVENTS))


class InferenceParams(BaseModel):
    """What `params` may hold for an inference job; anything else is a typo worth a 422."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int | None = Field(default=None, ge=1, le=4096)  # items per micro-batch
    batch_tokens: int | None = Field(default=None, ge=64, le=1_048_576)  # tokens per batch


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: JobTypeName = "inference"
    model: str | None = Field(default=None, max_length=140)
    framework: str | None = None
    input: JobInput
    device: Device = "auto"
    params: dict[str, Any] = Field(default_factory=dict)
    webhook: WebhookSpec | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    output_model: str | None = None
    # Past this many seconds after submission the job is stopped and ends `cancelled` with
    # error code `deadline_exceeded`, keeping the results finished by then.
    deadline_seconds: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)

    @model_validator(mode="after")
    def _model_for_inference(self) -> JobCreate:
        if self.type == "inference":
            if not self.model:
                raise ValueError("an inference job needs `model`")
            InferenceParams.model_validate(self.params)
        if len(self.metadata) > 16:
            raise ValueError("metadata holds at most 16 keys")
        return self


class JobCounts(BaseModel):
    total: int
    succeeded: int
    failed: int


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    object: Literal["job"] = "job"
    type: str
    status: str
    model: str | None
    device: str
    queue: str
    counts: JobCounts
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    result: dict[str, Any] | None
    error: JobError | None
    attempts: int
    retry_of: str | None = None
    deadline_at: datetime | None = None
    params: dict[str, Any]
    webhook: dict[str, Any] | None
    metadata: dict[str, str]
    usage: dict[str, float]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool
    last_id: str | None


class JobEventPublic(BaseModel):
    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventPublic]
