from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class FilePublic(BaseModel):
    id: str = Field(description="The file's id.", examples=["file_8f2c1e0a9b7d4c3e"])
    object: Literal["file"] = "file"
    purpose: str = Field(
        description="batch, training, model (uploads) or results (written by a job).",
        examples=["batch"],
    )
    filename: str = Field(description="The name it was uploaded with.", examples=["docs.jsonl"])
    bytes: int = Field(description="Its size.", examples=[52410])
    sha256: str = Field(
        description="SHA-256 of its bytes, hex.",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )
    created_at: datetime = Field(description="When it was stored.")


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FilePublic] = Field(description="Files, newest first.")
    has_more: bool = Field(description="Whether another page follows.", examples=[False])
    last_id: str | None = Field(
        description="Pass as `after` for the next page.", examples=["file_8f2c1e0a9b7d4c3e"]
    )
