"""API keys: created, listed, revoked, and checked on every request (from memory when recent)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import utcnow
from app.models import ApiKey, Tenant
from app.services.errors import Conflict, Forbidden, NotFound, ServiceError

KEY_PREFIX = "mf_"
DISPLAY_PREFIX_CHARS = 10  # "mf_" and 7 random characters: enough to tell keys apart in a list
LAST_USED_EVERY = timedelta(minutes=1)  # `last_used_at` is written at most this often per key


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so one fast hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, tenant: Tenant, expires_in: timedelta | None = None) -> str:
    """Returns the key itself; only its hash is stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            tenant_id=tenant.id,
            key_hash=hash_key(key),
            prefix=key[:DISPLAY_PREFIX_CHARS],
            expires_at=utcnow() + expires_in if expires_in else None,
        )
    )
    session.flush()
    return key


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """(key, tenant name), oldest first."""
    query = select(ApiKey, Tenant.name).join(Tenant).order_by(ApiKey.created_at, ApiKey.id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return [(key, name) for key, name in session.execute(query)]


def revoke_key(session: Session, prefix_or_key: str) -> ApiKey:
    """Revoke the one key with this display prefix (or this whole key)."""
    if len(prefix_or_key) > DISPLAY_PREFIX_CHARS:
        condition = ApiKey.key_hash == hash_key(prefix_or_key)
    else:
        condition = ApiKey.prefix == prefix_or_key
    keys = list(session.scalars(select(ApiKey).where(condition).with_for_update()))
    if not keys:
        raise NotFound(f"no API key {prefix_or_key!r}")
    if len(keys) > 1:
        raise Conflict(f"{len(keys)} keys begin {prefix_or_key}: give the whole key")
    key = keys[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


# Every request authenticates; a key read from PostgreSQL is answered from memory for
# AUTH_CACHE_SECONDS. Each API process has its own memory; `modelfarm keys revoke` and
# `tenants set|disable` raise a generation in Redis that every process reads with its
# rate-limit check (one round trip it makes anyway), so those changes apply at once; only with
# Redis down do they take up to AUTH_CACHE_SECONDS in the other processes.
AUTH_CACHE_SIZE = 4096


@dataclass(frozen=True)
class KnownKey:
    """A key as read from PostgreSQL, with its tenant (detached: only its columns are read)."""

    tenant: Tenant
    key_id: str
    expires_at: datetime | None
    revoked: bool
    generation: str | None  # the auth generation this process had seen before reading it
    until: float  # monotonic time this entry may be used until

    def check_key(self) -> None:
        """Refuse a revoked or expired key: for good, so no other check is needed first."""
        if self.revoked:
            raise Unauthorized("the API key was revoked")
        if self.expires_at is not None and self.expires_at <= utcnow():
            raise Unauthorized(f"the API key expired at {self.expires_at:%Y-%m-%d %H:%M:%S} UTC")

    def check(self) -> Tenant:
        """The tenant, or the refusal this key gets now."""
        self.check_key()
        if self.tenant.disabled_at is not None:
            raise Forbidden(f"tenant {self.tenant.name} is disabled", code="tenant_disabled")
        return self.tenant


_known: dict[str, KnownKey] = {}
_generation: str | None = None  # the latest auth generation this process has seen


def known_key(key: str) -> KnownKey | None:
    """The entry of a key read within the last few seconds (no I/O)."""
    hit = _known.get(hash_key(key))
    if hit is not None and hit.until > time.monotonic():
        return hit
    return None


def seen_generation(generation: str) -> None:
    """Redis says keys or tenants changed: forget every key this process remembers."""
    global _generation
    if generation != _generation:
        _known.clear()
        _generation = generation


def look_up(session: Session, key: str, generation: str | None = None) -> KnownKey | None:
    """Read a key and its tenant from PostgreSQL (None: no such key) and remember them."""
    generation = generation if generation is not None else _generation
    digest = hash_key(key)
    row = session.execute(
        select(ApiKey.id, ApiKey.expires_at, ApiKey.revoked_at, ApiKey.last_used_at, Tenant)
        .join(Tenant)
        .where(ApiKey.key_hash == digest)
    ).first()
    if row is None:
        return None
    key_id, expires_at, revoked_at, last_used_at, tenant = row
    now = utcnow()
    if revoked_at is None and (last_used_at is None or last_used_at < now - LAST_USED_EVERY):
        # Conditional, so API processes reading one key together write it once a minute.
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_EVERY),
            )
            .values(last_used_at=now)
        )
    session.expunge(tenant)
    entry = KnownKey(
        tenant=tenant,
        key_id=key_id,
        expires_at=expires_at,
        revoked=revoked_at is not None,
        generation=generation,
        until=time.monotonic() + get_settings().auth_cache_seconds,
    )
    if len(_known) >= AUTH_CACHE_SIZE:
        _known.clear()
    _known[digest] = entry
    return entry


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant that owns a key that may be used now, or None."""
    entry = known_key(key) or look_up(session, key)
    if entry is None:
        return None
    try:
        return entry.check()
    except ServiceError:
        return None


def forget_keys() -> None:
    _known.clear()
