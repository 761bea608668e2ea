from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.api.errors import error_response
from app.api.guards import GuardedRoute
from app.db import session_scope
from app.dispatch import broker_reachable
from app.metrics import exposition

router = APIRouter(tags=["health"], route_class=GuardedRoute)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database_reachable() -> bool:
    try:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/readyz", response_model=None)
async def readyz() -> dict[str, str] | Response:
    database = await run_in_threadpool(_database_reachable)
    broker = await run_in_threadpool(broker_reachable)
    if database and broker:
        return {"status": "ready", "database": "ok", "broker": "ok"}
    down = [name for name, ok in (("database", database), ("broker", broker)) if not ok]
    return error_response(503, "service_unavailable", f"not reachable: {', '.join(down)}")


@router.get("/metrics")
def metrics() -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
