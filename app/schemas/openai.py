"""Bodies of the OpenAI-compatible surface (/openai/v1), shaped as the `openai` client's types
(openai/types/batch.py, file_object.py, create_embedding_response.py, model.py) parse them:
`object` on every object, times as Unix seconds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from app.schemas.metadata import Metadata

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
Endpoint = Literal[
    "/v1/embeddings", "/v1/predictions", "/v1/rerank", "/v1/chat/completions", "/v1/completions"
]
BatchEvent = Literal["batch.completed", "batch.failed", "batch.cancelled", "batch.expired"]
BATCH_EVENTS: tuple[BatchEvent, ...] = (
    "batch.completed",
    "batch.failed",
    "batch.cancelled",
    "batch.expired",
)


class OpenAIFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class OpenAIFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIFile]
    first_id: str | None
    last_id: str | None
    has_more: bool


class OpenAIFileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchWebhook(BaseModel):
    """The farm's webhook for a batch (`extra_body={"webhook": {...}}`), with OpenAI's events."""

    model_config = ConfigDict(extra="forbid")
    url: HttpUrl
    events: list[BatchEvent] = Field(default_factory=lambda: list(BATCH_EVENTS))


class BatchCreate(BaseModel):
    # The client sends only these (and `output_expires_after`, not kept here); the farm's own
    # webhook field comes through `extra_body`.
    model_config = ConfigDict(extra="ignore")
    input_file_id: str = Field(max_length=100)
    endpoint: Endpoint
    completion_window: Literal["24h"]
    metadata: Metadata | None = None  # OpenAI's limits: 16 pairs, 64/512 characters
    webhook: BatchWebhook | None = None
    #: the farm's own (`extra_body={"deadline_seconds": 600}`): a deadline shorter than the
    #: completion window, which OpenAI only accepts as `24h`; past it the batch is `expired`
    deadline_seconds: float | None = Field(default=None, gt=0, le=24 * 3600)


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchErrorItem(BaseModel):
    code: str | None
    message: str | None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchErrorItem]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    """What the batch's requests read (embeddings and predictions write no tokens)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class OpenAIBatch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str | None
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None


class OpenAIBatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIBatch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EmbeddingCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `user` and whatever newer clients add
    input: str | list[str]
    model: str = Field(max_length=140)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)

    def request_body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class RerankCreate(BaseModel):
    """A rerank request, as TEI, Cohere and Jina take it (OpenAI has no rerank endpoint)."""

    model_config = ConfigDict(extra="ignore")  # `return_documents` and what other clients add
    model: str = Field(max_length=140)
    query: str
    documents: list[str] = Field(min_length=1, max_length=1000)
    top_n: int | None = Field(default=None, ge=1)

    def request_body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: str | None = None  # the farm announces none
    #: the farm's own: what the model does, and how many tokens it reads at once (prompt and
    #: answer together; null for a model without such a limit)
    task: str | None = None
    context_length: int | None = None


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person.")
    type: str = Field(description="`invalid_request_error`, `authentication_error`, ...")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description="A short machine-readable code.")


class OpenAIErrorResponse(BaseModel):
    """Every error answer under /openai/v1: OpenAI's shape, so its client raises the right
    exception class for the status code."""

    error: OpenAIErrorDetail


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class GenerationCreate(BaseModel):
    """A chat completion or completion request. Only what the API itself acts on is read here;
    every other field goes to the worker as sent, which passes each on to the model, accepts it
    at the value that changes nothing, or refuses it naming it (workers/runtime/
    openai_generation.py): nothing is silently ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=140)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def request_body(self) -> dict[str, Any]:
        body = self.model_dump(exclude={"stream", "stream_options"})
        return body


class ChatCompletionCreate(GenerationCreate):
    messages: list[Any] = Field(description="`{role, content}` objects; text content only.")


class CompletionCreate(GenerationCreate):
    prompt: str | list[Any] = Field(description="A string, or a list of strings.")
