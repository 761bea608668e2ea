"""Dependency aliases, so a route reads `def get_job(job_id: str, session: SessionDep, ...)`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.models import Tenant
from app.services.errors import ServiceError
from app.services.tenants import authenticate, known_key


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


async def get_session() -> AsyncIterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on error.

    Async, so that it costs a hop to a worker thread only when there is a transaction to end
    (a route that committed its own work, like job submission, needs none): every hop is a
    thread handing the GIL back and forth with the event loop.
    """
    session = get_sessionmaker()()
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        session.close()  # holds no connection by now, so this does no I/O


# scope="function": commit before the answer is sent, so an id a client receives already exists.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def current_tenant(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    tenant = known_key(key.strip())
    if tenant is None:
        tenant = await run_in_threadpool(_look_up, session, key.strip())
    if tenant is None:
        raise Unauthorized("the API key is not valid")
    return tenant


def _look_up(session: Session, key: str) -> Tenant | None:
    tenant = authenticate(session, key)
    # End the read-only transaction: its pooled connection goes back while the route works
    # (or waits, with `Prefer: wait`); the session starts a new one if the route writes.
    session.commit()
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
