from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey, Tenant

KEY_PREFIX = "mf_"


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so one fast hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, tenant: Tenant) -> str:
    """Returns the key itself; only its hash is stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:10]))
    session.flush()
    return key


def authenticate(session: Session, key: str) -> Tenant | None:
    return session.scalar(select(Tenant).join(ApiKey).where(ApiKey.key_hash == hash_key(key)))
