from __future__ import annotations

import hashlib
import secrets
import time

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


# Every request authenticates; a known key is answered from memory for this long. Only keys
# that matched are kept, so a new key works at once. Each API process has its own memory: a key
# removed from the database keeps working up to this long in the others (`forget_keys` clears
# only the calling process's).
AUTH_CACHE_SECONDS = 5.0
AUTH_CACHE_SIZE = 4096
_known: dict[str, tuple[float, Tenant]] = {}


def known_key(key: str) -> Tenant | None:
    """The tenant of a key that authenticated within the last few seconds (no I/O)."""
    hit = _known.get(hash_key(key))
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return None


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant that owns `key`, detached from `session` (only its columns are read)."""
    known = known_key(key)
    if known is not None:
        return known
    digest = hash_key(key)
    tenant = session.scalar(select(Tenant).join(ApiKey).where(ApiKey.key_hash == digest))
    if tenant is not None:
        session.expunge(tenant)
        if len(_known) >= AUTH_CACHE_SIZE:
            _known.clear()
        _known[digest] = (time.monotonic() + AUTH_CACHE_SECONDS, tenant)
    return tenant


def forget_keys() -> None:
    _known.clear()
