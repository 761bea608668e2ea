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
from app.ratelimit import take
from app.services.errors import RateLimited
from app.services.keys import KnownKey, Unauthorized, known_key, look_up, seen_generation
from app.unit_of_work import commit, rollback


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
            await run_in_threadpool(commit, session)  # then what the services queued is sent
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(rollback, session)
        raise
    finally:
        session.close()  # holds no connection by now, so this does no I/O


# scope="function": commit before the answer is sent, so an id a client receives already exists.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def settings() -> Settings:
    """The settings, as a dependency. Async: FastAPI runs a plain function dependency in a
    worker thread, a hop that cost every request more than reading the (cached) settings."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings)]


async def current_tenant(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
    """The caller's tenant, once its key is valid and the tenant is under its rate limit.

    A key read in the last AUTH_CACHE_SECONDS costs no query; every request costs one Redis
    round trip (app/ratelimit.py), which also says whether keys or tenants changed since.
    """
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send `Authorization: Bearer <api key>`")
    entry = known_key(key)
    if entry is None:
        entry = await run_in_threadpool(_look_up, session, key, None)
    entry.check_key()
    # A disabled tenant is refused only after this: it may have been enabled again since.
    decision = await take(entry.tenant.id, entry.tenant.rate_limit, entry.tenant.rate_burst)
    if decision.generation is not None and decision.generation != entry.generation:
        # Revoked, disabled or given new limits since this process read the key: read again.
        seen_generation(decision.generation)
        entry = await run_in_threadpool(_look_up, session, key, decision.generation)
    tenant = entry.check()
    if not decision.allowed and tenant.rate_limit is not None:
        raise RateLimited(
            f"tenant {tenant.name} is over its rate limit of {tenant.rate_limit:g} requests/s",
            decision.retry_after,
        )
    return tenant


def _look_up(session: Session, key: str, generation: str | None) -> KnownKey:
    entry = look_up(session, key, generation)
    # End the transaction (which may have marked the key used): its pooled connection goes
    # back while the route works (or waits, with `Prefer: wait`); the session starts a new one
    # if the route writes.
    commit(session)
    if entry is None:
        raise Unauthorized("the API key is not valid")
    return entry


TenantDep = Annotated[Tenant, Depends(current_tenant)]
