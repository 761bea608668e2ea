from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, JSONType, utcnow
from app.ids import new_id


class Model(Base):
    """A tenant's named model; what runs is one of its numbered versions."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version"
    )


class VersionStatus(enum.StrEnum):
    VALIDATING = "validating"  #: registered; a worker has yet to check and probe the upload
    READY = "ready"  #: checked and probed: serves jobs
    FAILED = "failed"  #: refused; `error` says why, and nothing of it is in the store
    #: deleted by its tenant: kept as a row (its number is never given again, finished jobs
    #: still name it), nothing of it in the store, shown nowhere, serving nothing
    DELETED = "deleted"


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        # What the sweeper reads every pass: the (few) versions still validating.
        Index(
            "ix_model_versions_validating",
            "created_at",
            postgresql_where=text("status = 'validating'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mv"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    framework: Mapped[str] = mapped_column(String(40))
    # None while a scikit-learn upload is validating without a task given: read from the file.
    task: Mapped[str | None] = mapped_column(String(40))
    file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id", ondelete="SET NULL"))
    # Where the runnable artifact lies: a skops file, or a directory unpacked from the archive.
    # Set when the version becomes ready (the validating attempt that won wrote it there).
    uri: Mapped[str | None] = mapped_column(String(1024))
    info: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(20), default=VersionStatus.READY)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  #: {code, message} if failed
    # Validation is durable like a job: attempts so far, when its message was last published
    # (None: not yet, the sweeper publishes it), and which attempt holds it until when.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    model: Mapped[Model] = relationship(back_populates="versions")
