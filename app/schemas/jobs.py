from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from app.schemas.metadata import Metadata
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
    custom_id: CustomId = Field(
        default=None,
        description="Your id for the item, repeated on its output or error line.",
        examples=["doc-1"],
    )
    input: Any = Field(
        description="What the model reads: a string for text models, a list of numbers or an "
        "object of named features for scikit-learn models.",
        examples=["The cat sat on the mat."],
    )


class JobInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_id: str | None = Field(
        default=None,
        description="An uploaded JSONL file (purpose `batch`, or `training` for training jobs).",
        examples=["file_8f2c1e0a9b7d4c3e"],
    )
    items: list[InlineItem] | None = Field(
        default=None,
        description="Inline items for a small job (up to `MAX_INLINE_ITEMS`); give these or "
        "`file_id`, not both.",
        examples=[[{"custom_id": "a", "input": "hello"}, {"custom_id": "b", "input": "world"}]],
    )

    @model_validator(mode="after")
    def _one_source(self) -> JobInput:
        if (self.file_id is None) == (self.items is None):
            raise ValueError("give exactly one of input.file_id and input.items")
        if self.items is not None and not self.items:
            raise ValueError("input.items is empty")
        return self


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: HttpUrl = Field(
        description="Where the farm POSTs signed events: http(s) on a public address "
        "(private and loopback ones are refused unless `WEBHOOK_ALLOWED_HOSTS` lists them)."
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(TERMINAL_EVENTS),
        description="Which events to send; the default is the three terminal ones.",
        examples=[["job.succeeded", "job.failed"]],
    )


class InferenceParams(BaseModel):
    """What `params` may hold for an inference job; anything else is a typo worth a 422."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int | None = Field(default=None, ge=1, le=4096)  # items per micro-batch
    batch_tokens: int | None = Field(default=None, ge=64, le=1_048_576)  # tokens per batch
    # Input and output lines in OpenAI's Batch API format (workers/runtime/openai_lines.py),
    # every line a request to `endpoint`; set by /openai/v1, usable from /v1 as well.
    format: Literal["native", "openai"] | None = None
    endpoint: (
        Literal[
            "/v1/embeddings",
            "/v1/predictions",
            "/v1/rerank",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/audio/transcriptions",
        ]
        | None
    ) = None
    completion_window: Literal["24h"] | None = None  # an OpenAI batch's (a sync request: none)
    normalize: bool | None = None  # image-feature-extraction: L2-normalise the embedding
    # zero-shot-classification: the candidate labels of every line that names none itself
    labels: list[str] | None = Field(default=None, min_length=1, max_length=100)
    multi_label: bool | None = None
    hypothesis_template: str | None = Field(default=None, max_length=500)
    # A synchronous generation request's `stream: true`: its worker publishes the text as it
    # is decoded (app/api/openai/streams.py), on a channel named after the job.
    stream: bool | None = None
    # fp32 (the default), bf16 or int8, where the model offers it (docs/decisions/0017)
    precision: Literal["fp32", "bf16", "int8"] | None = None
    # Text generation's defaults for every line (a line's `input` may override each one);
    # the same bounds as workers/runtime/gen_params.py, which checks a line's own values.
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    # image-classification: the labels an output scores (at least 1); text generation: sample
    # among the k likeliest tokens (0: all of them)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=-(2**63) + 1, le=2**63 - 1)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    # automatic-speech-recognition: the audio's language (`en` or `english`; left out, the
    # model detects it) and timed segments in the output (docs/tasks.md#speech-to-text)
    language: str | None = Field(default=None, min_length=1, max_length=32)
    timestamps: bool | None = None

    @model_validator(mode="after")
    def _endpoint_with_format(self) -> InferenceParams:
        if (self.format == "openai") != (self.endpoint is not None):
            raise ValueError("params.format `openai` goes with params.endpoint, and only then")
        return self


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: JobTypeName = Field(
        default="inference",
        description="`inference` runs a model over items; `training` fits a new model version.",
        examples=["inference"],
    )
    model: str | None = Field(
        default=None,
        max_length=140,
        description="Inference: the model, `name` (its latest ready version) or `name@N`.",
        examples=["minilm"],
    )
    framework: str | None = Field(
        default=None,
        description="Training only: `sklearn` or `transformers`.",
        examples=["sklearn"],
    )
    task: Literal["image-classification"] | None = Field(
        default=None,
        description="Training only: `image-classification` trains an image classifier from an "
        "archive with one folder per class (docs/images.md); left out, a `transformers` job "
        "fine-tunes a text classifier.",
        examples=["image-classification"],
    )
    input: JobInput = Field(description="Where the items come from: `file_id` or `items`.")
    device: Device = Field(
        default="auto",
        description="The pool that runs it: `cpu`, `gpu`, or `auto` (the GPU pool while a GPU "
        "worker is running).",
        examples=["auto"],
    )
    # Orders this tenant's own jobs in its share of the pool (docs/operations.md).
    priority: Priority = Field(
        default="normal",
        description="`high`, `normal` or `low`: which of this tenant's jobs go first in its "
        "share of a pool (never ahead of other tenants' share).",
        examples=["normal"],
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Inference: `batch_size`, `batch_tokens`; text generation's defaults "
        "`max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `repetition_penalty`. "
        "Training: `estimator`, "
        "`hyperparameters`, `validation_split`, or `base_model`, `epochs`, `learning_rate`.",
        examples=[{"batch_size": 64}],
    )
    webhook: WebhookSpec | None = Field(
        default=None, description="Optional: where to send signed job events."
    )
    metadata: Metadata = Field(
        default_factory=dict,
        description="Up to 16 pairs of your own (keys of at most 64 characters, values of at "
        "most 512, as OpenAI's), returned on the job.",
        examples=[{"project": "search-index"}],
    )
    output_model: str | None = Field(
        default=None,
        description="Training only: the model name the new version is registered under.",
        examples=["churn"],
    )
    # Past this many seconds after submission the job is stopped and ends `cancelled` with
    # error code `deadline_exceeded`, keeping the results finished by then.
    deadline_seconds: float | None = Field(
        default=None,
        gt=0,
        le=30 * 24 * 3600,
        description="Stop the job this many seconds after submission (it ends `cancelled`).",
        examples=[3600],
    )

    @model_validator(mode="after")
    def _fields_for_type(self) -> JobCreate:
        if self.type == "inference":
            if not self.model:
                raise ValueError("an inference job needs `model`")
            if self.framework is not None or self.output_model is not None:
                raise ValueError("`framework` and `output_model` are for training jobs")
            if self.task is not None:
                raise ValueError("`task` is for training jobs (the model decides an inference's)")
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
            if self.task is not None and self.framework != "transformers":
                raise ValueError("`task: image-classification` trains with framework transformers")
            if self.input.file_id is None:
                raise ValueError("training input is an uploaded file (purpose `training`)")
        return self


class JobCounts(BaseModel):
    total: int = Field(description="Input items (training: steps).", examples=[10000])
    succeeded: int = Field(
        description="Items with an output line so far (training: steps done).", examples=[4200]
    )
    failed: int = Field(description="Items with an error line so far (training: 0).", examples=[3])


class JobError(BaseModel):
    code: str = Field(
        description="Why the job failed, machine-readable.", examples=["invalid_input"]
    )
    message: str = Field(
        description="Why the job failed, for a person.", examples=["the input file is empty"]
    )


class JobPublic(BaseModel):
    id: str = Field(description="The job's id.", examples=["job_3b9f0c2d1e4a5b6c"])
    object: Literal["job"] = "job"
    type: str = Field(description="`inference` or `training`.", examples=["inference"])
    status: str = Field(
        description="queued, running, cancelling, then succeeded, failed or cancelled.",
        examples=["running"],
    )
    model: str | None = Field(description="The resolved model version.", examples=["minilm@1"])
    framework: str | None = Field(default=None, description="Training: the framework.")
    output_model: str | None = Field(
        default=None, description="Training: the model its new version belongs to."
    )
    device: str = Field(description="The device asked for.", examples=["auto"])
    queue: str = Field(description="The pool's queue it went to.", examples=["cpu"])
    priority: str = Field(default="normal", description="`high`, `normal` or `low`.")
    counts: JobCounts = Field(description="Item counts, updated about once a second.")
    input_file_id: str | None = Field(
        description="The input file (inline items are written to one).",
        examples=["file_8f2c1e0a9b7d4c3e"],
    )
    output_file_id: str | None = Field(
        description="Output lines in input order, once the job has ended.", examples=[None]
    )
    error_file_id: str | None = Field(
        description="Error lines in input order, once the job has ended.", examples=[None]
    )
    result: dict[str, Any] | None = Field(
        description="Training: the new version and its validation metrics.",
        examples=[{"model": "churn@2", "metrics": {"accuracy": 0.93}}],
    )
    error: JobError | None = Field(description="Set when `status` is `failed`.")
    attempts: int = Field(description="How many times a worker started it.", examples=[1])
    retry_of: str | None = Field(
        default=None, description="The job whose failed items this one retries."
    )
    deadline_at: datetime | None = Field(
        default=None, description="When the job is stopped if it has not ended."
    )
    params: dict[str, Any] = Field(description="The params it was given.", examples=[{}])
    webhook: dict[str, Any] | None = Field(description="The webhook it was given.", examples=[None])
    metadata: dict[str, str] = Field(
        description="Your metadata, as given.", examples=[{"project": "search-index"}]
    )
    usage: dict[str, float | int] = Field(
        description="Compute spent on the job, `tokens`: what its text model read (for text "
        "generation: the prompts), as the model's tokenizer counts it, and `completion_tokens`: "
        "what a text-generation model wrote (both recorded as each shard finishes, once however "
        "often it ran).",
        examples=[{"cpu_seconds": 12.5, "gpu_seconds": 0, "tokens": 48210, "completion_tokens": 0}],
    )
    progress: dict[str, Any] | None = Field(
        default=None,
        description="While the job runs: `items_per_second` (its average since a worker took "
        "it) and `eta_seconds` (null until an item is done); training jobs add step, "
        "steps_total, epoch, epochs and loss (their items are steps).",
        examples=[{"items_per_second": 412.5, "eta_seconds": 9.7}],
    )
    notice: str | None = Field(
        default=None,
        description="Why a queued job is not starting, e.g. no GPU worker is running.",
    )
    created_at: datetime = Field(description="When it was submitted.")
    started_at: datetime | None = Field(description="When a worker first took it.")
    finished_at: datetime | None = Field(description="When it ended; null until then.")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic] = Field(description="Jobs, newest first.")
    has_more: bool = Field(description="Whether another page follows.", examples=[False])
    last_id: str | None = Field(
        description="Pass as `after` for the next page.", examples=["job_3b9f0c2d1e4a5b6c"]
    )


class JobEventPublic(BaseModel):
    id: int = Field(description="Increasing id; pass as `after` to page.", examples=[41])
    type: str = Field(description="What happened.", examples=["shard_succeeded"])
    data: dict[str, Any] = Field(
        description="Details of the event.", examples=[{"shard": 0, "succeeded": 500}]
    )
    created_at: datetime = Field(description="When it happened.")


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventPublic] = Field(description="Events, oldest first.")
    has_more: bool = Field(description="Whether another page follows.", examples=[False])
    last_id: int | None = Field(description="Pass as `after` for the next page.", examples=[41])
