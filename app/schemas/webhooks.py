from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class WebhookSecretPublic(BaseModel):
    object: Literal["webhook_secret"] = "webhook_secret"
    key: str = Field(
        description="Verify requests with the `standardwebhooks` (or `svix`) library.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class DeliveryAttemptPublic(BaseModel):
    number: int = Field(description="1 for the first attempt.", examples=[1])
    started_at: datetime = Field(description="When the POST started.")
    duration_ms: int | None = Field(description="How long it took.", examples=[84])
    status_code: int | None = Field(description="The receiver's answer, if any.", examples=[200])
    error: str | None = Field(description="Why it failed, when it did.", examples=[None])


class DeliveryPublic(BaseModel):
    id: str = Field(description="The delivery's id.", examples=["dlv_5e6f7a8b9c0d"])
    object: Literal["delivery"] = "delivery"
    job_id: str = Field(description="The job it reports on.", examples=["job_3b9f0c2d1e4a5b6c"])
    event: str = Field(description="The event it carries.", examples=["job.succeeded"])
    url: str = Field(description="The receiver.", examples=["https://hooks.example.com/mf"])
    webhook_id: str = Field(
        description="The `webhook-id` header, the same on every attempt: de-duplicate on it.",
        examples=["msg_0a1b2c3d4e5f"],
    )
    status: str = Field(description="pending, sending, succeeded or failed.", examples=["pending"])
    attempts: list[DeliveryAttemptPublic] = Field(description="Every attempt, oldest first.")
    next_attempt_at: datetime | None = Field(description="When it is tried next.")
    last_status_code: int | None = Field(description="The last attempt's answer.", examples=[503])
    last_error: str | None = Field(description="The last attempt's error.", examples=[None])
    created_at: datetime = Field(description="When the event happened.")
    delivered_at: datetime | None = Field(description="When a receiver answered 2xx.")


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeliveryPublic] = Field(description="Deliveries, oldest first.")
    has_more: bool = Field(description="Whether another page follows.", examples=[False])
    last_id: str | None = Field(description="Pass as `after` for the next page.")
