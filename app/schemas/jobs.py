from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from app.schemas.models import MODEL_NAME_PATTERN

JobTypeName = Literal["inference", "training"]
Device = Literal["cpu", "gpu", "auto"]
Priority = Literal["high", "normal", "low"]
WebhookEvent = Literal[
    "job.started", "job.progress", "job.succeeded", "job.failed", "job.cancelled"
]
TERMINAL_EVENTS: tuple[WebhookEvent, ...] = ("job.succeeded", "job.failed", "job.cancelled")
TRAINING_FRAMEWORKS = ("sklearn", "transformers")


# The same rule as batch input lines (workers/runtime/items.py): a short string, an integer
# that JavaScript readers keep exact, or null.
CustomId = (
    Annotated[str, Field(max_length=512)]
    | Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)]
    | None
)


class InlineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: CustomId = None
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
    # Orders this tenant's own jobs in its share of the pool (README, "Sharing the farm").
    priority: Priority = "normal"
    params: dict[str, Any] = Field(default_factory=dict)
    webhook: WebhookSpec | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    output_model: str | None = None
    # Past this many seconds after submission the job is stopped and ends `cancelled` with
    # error code `deadline_exceeded`, keeping the results finished by then.
    deadline_seconds: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)

    @model_validator(mode="after")
    def _fields_for_type(self) -> JobCreate:
        if self.type == "inference":
            if not self.model:
                raise ValueError("an inference job needs `model`")
            if self.framework is not None or self.output_model is not None:
                raise ValueError("`framework` and `output_model` are for training jobs")
            InferenceParams.model_validate(self.params)
        else:
            if self.framework not in TRAINING_FRAMEWORKS:
                raise ValueError(
                    f"a training job needs `framework`: one of {', '.join(TRAINING_FRAMEWORKS)}"
                )
            if not self.output_model or not re.match(MODEL_NAME_PATTERN, self.output_model):
                raise ValueError(
                    "a training job needs `output_model`, a model name "
                    "(lower case letters, digits, '.', '_', '-')"
                )
            if self.model is not None:
                raise ValueError("a training job names its base model in `params.base_model`")
            if self.input.file_id is None:
                raise ValueError("training input is an uploaded file (purpose `training`)")
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
    framework: str | None = None  # training
    output_model: str | None = None  # training: the model its new version belongs to
    device: str
    queue: str
    priority: str = "normal"
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
    progress: dict[str, Any] | None = None  # training: step, steps_total, epoch, epochs, loss
    notice: str | None = None  # why a queued job is not starting, e.g. no GPU worker
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
    has_more: bool
    last_id: int | None
