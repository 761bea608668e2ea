"""SQLAlchemy ORM classes. They never leave the service layer: the API answers with schemas."""

from app.models.delivery import Delivery, DeliveryAttempt, DeliveryStatus, WebhookSecret
from app.models.file import File, FilePurpose
from app.models.heartbeat import WorkerHeartbeat
from app.models.job import (
    Job,
    JobEvent,
    JobPriority,
    JobShard,
    JobStatus,
    JobType,
    ShardStatus,
)
from app.models.model import Model, ModelVersion, VersionStatus
from app.models.tenant import ApiKey, Tenant

__all__ = [
    "ApiKey",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryStatus",
    "File",
    "FilePurpose",
    "Job",
    "JobEvent",
    "JobPriority",
    "JobShard",
    "JobStatus",
    "JobType",
    "Model",
    "ModelVersion",
    "ShardStatus",
    "Tenant",
    "VersionStatus",
    "WebhookSecret",
    "WorkerHeartbeat",
]
