from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Framework = Literal["sklearn", "transformers", "sentence-transformers", "gguf"]
Task = Literal[
    "classification",
    "regression",
    "text-classification",
    "feature-extraction",
    "image-classification",
    "image-feature-extraction",
    "text-ranking",
    "token-classification",
    "zero-shot-classification",
    "text-generation",
    "automatic-speech-recognition",
    "text2text-generation",
]

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"


class ModelCreate(BaseModel):
    name: str = Field(
        pattern=MODEL_NAME_PATTERN,
        description="The model's name; each registration adds its next version.",
        examples=["churn"],
    )
    framework: Framework = Field(description="What the upload holds.", examples=["sklearn"])
    task: Task | None = Field(
        default=None,
        description="scikit-learn: read from the estimator when left out.",
        examples=["classification"],
    )
    file_id: str = Field(
        description="The uploaded file (purpose `model`): a skops file or an archive.",
        examples=["file_8f2c1e0a9b7d4c3e"],
    )
    precision: Literal["fp32", "bf16", "int8"] = Field(
        default="fp32",
        description="What jobs that name no `params.precision` run at; validation refuses "
        "the version if this precision is not offered (too far from fp32).",
        examples=["int8"],
    )


class ErrorBody(BaseModel):
    code: str = Field(description="Why it failed, machine-readable.", examples=["untrusted_model"])
    message: str = Field(description="Why it failed, for a person.")


class ModelVersionPublic(BaseModel):
    id: str = Field(description="The version's id.", examples=["mv_1a2b3c4d5e6f"])
    object: Literal["model_version"] = "model_version"
    model: str = Field(description="`name@version`, what a job names.", examples=["churn@2"])
    name: str = Field(description="The model's name.", examples=["churn"])
    version: int = Field(description="1, 2, ... per name.", examples=[2])
    framework: str = Field(description="What the version holds.", examples=["sklearn"])
    task: str | None = Field(
        description="Null while a scikit-learn upload without a task is validating.",
        examples=["classification"],
    )
    file_id: str | None = Field(description="The upload it came from.")
    info: dict[str, Any] = Field(
        description="What validation learned (classes, dimensions ...).",
        examples=[{"classes": ["no", "yes"]}],
    )
    #: validating (a worker checks and probes the upload) -> ready (serves jobs) | failed
    status: str = Field(
        default="ready",
        description="validating (a worker checks it), then ready (serves jobs) or failed.",
        examples=["ready"],
    )
    error: ErrorBody | None = Field(default=None, description="Why it failed, when it did.")
    created_at: datetime | None = Field(description="When it was registered.")


class ModelPublic(BaseModel):
    object: Literal["model"] = "model"
    name: str = Field(description="What jobs name.", examples=["minilm"])
    builtin: bool = Field(description="Shipped with the farm, for every tenant.")
    latest_version: int = Field(
        description="The latest ready version, what `name` alone runs; 0 if none is ready.",
        examples=[1],
    )
    versions: list[ModelVersionPublic] = Field(description="Every version, oldest first.")
    task: str | None = Field(
        default=None,
        description="What the latest ready version does (null while none is ready).",
        examples=["text-generation"],
    )
    context_length: int | None = Field(
        default=None,
        description="Tokens the latest ready version reads at once, prompt and answer "
        "together, for a model that has such a limit (text models).",
        examples=[8192],
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic] = Field(description="The models this tenant can name.")
