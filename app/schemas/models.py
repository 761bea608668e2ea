from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Framework = Literal["sklearn", "transformers", "sentence-transformers"]
Task = Literal["classification", "regression", "text-classification", "feature-extraction"]

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"


class ModelCreate(BaseModel):
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    framework: Framework
    task: Task | None = None  # sklearn: read from the estimator when left out
    file_id: str


class ErrorBody(BaseModel):
    code: str
    message: str


class ModelVersionPublic(BaseModel):
    id: str
    object: Literal["model_version"] = "model_version"
    model: str  # "name@version", what a job names
    name: str
    version: int
    framework: str
    task: str | None  # null while a scikit-learn upload without a task is validating
    file_id: str | None
    info: dict[str, Any]
    #: validating (a worker checks and probes the upload) -> ready (serves jobs) | failed
    status: str = "ready"
    error: ErrorBody | None = None  # {code, message} when failed
    created_at: datetime | None


class ModelPublic(BaseModel):
    object: Literal["model"] = "model"
    name: str
    builtin: bool
    latest_version: int  # the latest ready version, what `name` alone runs; 0 if none is
    versions: list[ModelVersionPublic]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]
