"""The one shape of every non-2xx answer, as the OpenAPI schema documents it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(
        description="A stable, machine-readable reason: branch on this, not on the message.",
        examples=["not_found"],
    )
    message: str = Field(
        description="What went wrong, for a person to read.", examples=["no job job_abc123"]
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail = Field(description="Every non-2xx answer holds exactly this.")
