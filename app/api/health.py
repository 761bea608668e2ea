from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from app import ratelimit
from app.api.docs import errors
from app.api.errors import error_response
from app.api.guards import GuardedRoute
from app.api.metrics import exposition
from app.api.serve import EDGE_EXTENSION
from app.broker.dispatch import broker_reachable
from app.config import get_settings
from app.db import database_reachable
from app.services import farm_stats
from app.unit_of_work import session_scope

router = APIRouter(tags=["health"], route_class=GuardedRoute)


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """Answers while the API process runs; it reads nothing. No key needed."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, summary="Readiness", responses=errors(503))
async def readyz(request: Request) -> dict[str, object] | Response:
    """200 when PostgreSQL and the broker answer, with the live workers of each pool, the
    pools this farm runs that have none (reported, not a failure) and the pools it does not
    run by choice (MODELFARM_POOLS: no GPU pool on a host without a GPU), where rate limits
    are kept and whether the HTTP edge is bounded; 503 naming what is down."""
    database = await run_in_threadpool(database_reachable)
    broker = await run_in_threadpool(broker_reachable)
    limits = await ratelimit.probe()
    edge = "bounded" if EDGE_EXTENSION in request.scope.get("extensions", {}) else "unbounded"
    if database and broker:
        workers = await run_in_threadpool(_live_workers)
        expected = get_settings().expected_pools(tuple(workers))
        return {
            "status": "ready",
            "database": "ok",
            "broker": "ok",
            # Reported, never a failure: jobs wait safely in PostgreSQL for a worker, and a
            # farm without a GPU has no GPU pool at all.
            "workers": workers,
            "pools_without_workers": [
                pool for pool, n in workers.items() if n == 0 and pool in expected
            ],
            "pools_absent": [pool for pool in workers if pool not in expected],
            # "in-process" while Redis is away: limits hold per API process (app/ratelimit.py).
            "rate_limits": limits,
            # "unbounded": served without app/api/serve.py's protocol (docs/operations.md).
            "http_edge": edge,
        }
    down = [name for name, ok in (("database", database), ("broker", broker)) if not ok]
    message = f"not reachable: {', '.join(down)}; rate limits: {limits}"
    return error_response(503, "service_unavailable", message)


def _live_workers() -> dict[str, int]:
    with session_scope() as session:
        return farm_stats.live_workers(session)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(request: Request) -> Response:
    """The farm's Prometheus text: queue depths, live workers, items, job durations, webhook
    backlog, read at scrape time. No tenant key; with METRICS_TOKEN set, that token as a bearer
    token (the figures name tenants)."""
    token = get_settings().metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
            return error_response(401, "unauthorized", "/metrics needs the METRICS_TOKEN")
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
