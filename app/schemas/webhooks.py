from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class WebhookSecretPublic(BaseModel):
    object: Literal["webhook_secret"] = "webhook_secret"
    key: str  # "whsec_...": verify with the `standardwebhooks` (or `svix`) library


class DeliveryAttemptPublic(BaseModel):
    number: int
    started_at: datetime
    duration_ms: int | None
    status_code: int | None
    error: str | None


class DeliveryPublic(BaseModel):
    id: str
    object: Literal["delivery"] = "delivery"
    job_id: str
    event: str
    url: str
    webhook_id: str  # the `webhook-id` header, the same on every attempt
    status: str
    attempts: list[DeliveryAttemptPublic]
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DeliveryPublic]
    has_more: bool
    last_id: str | None
