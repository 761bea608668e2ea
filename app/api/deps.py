"""Dependency aliases, so a route reads `def get_job(job_id: str, session: SessionDep, ...)`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.models import Tenant
from app.services.errors import ServiceError
from app.services.tenants import authenticate


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


def get_session() -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": commit before the answer is sent, so an id a client receives already exists.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def current_tenant(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    tenant = authenticate(session, key.strip())
    if tenant is None:
        raise Unauthorized("the API key is not valid")
    # End the read-only transaction: its pooled connection goes back while the route works
    # (or waits, with `Prefer: wait`); the session starts a new one if the route writes.
    session.commit()
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
