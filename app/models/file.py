from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow
from app.ids import new_id


class FilePurpose(enum.StrEnum):
    BATCH = "batch"  #: JSONL input of a batch inference job
    TRAINING = "training"  #: JSONL of labelled examples
    MODEL = "model"  #: a model artifact: a skops file or an archive of safetensors + config
    BATCH_OUTPUT = "batch_output"  #: written by the farm: one output line per good input line
    BATCH_ERROR = "batch_error"  #: written by the farm: one error line per bad input line


class File(Base):
    """Bytes in the artifact store, owned by a tenant; `uri` says where they lie."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(20))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(String(1024))
    # JSONL items (lines that are not blank), when the farm wrote the file itself and so knows:
    # a job over a few inline items is planned from this, without reading its input.
    items: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
