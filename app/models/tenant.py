from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, utcnow
from app.ids import new_id


class Tenant(Base):
    """A team: it owns files, models and jobs, and sees nothing of any other tenant.

    Limits are NULL when there is none (`modelfarm tenants set`); the API reads them with the
    key, so they cost a request nothing beyond the check itself.
    """

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    rate_limit: Mapped[float | None] = mapped_column(Float)  # requests per second
    rate_burst: Mapped[int | None] = mapped_column(Integer)  # NULL: one second's worth
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)  # queued or running at once
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)  # the scheduler's to enforce
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)  # sum of its files
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """Only a SHA-256 of the key is kept; the key itself is shown once, when created."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)  # to recognise a key in a list
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Written at most once a minute per key (app/services/keys.py), never per request.
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")
