"""The FastAPI application."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from app.api import files, health, jobs, models, webhooks
from app.api.errors import install_error_handlers
from app.api.guards import RequestGuard
from app.metrics import HTTP_REQUESTS


def create_app() -> FastAPI:
    app = FastAPI(title="modelfarm", version="0.1.0")
    install_error_handlers(app)
    app.add_middleware(RequestGuard)
    for module in (health, files, models, jobs, webhooks):
        app.include_router(module.router)

    @app.middleware("http")
    async def _measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        HTTP_REQUESTS.labels(request.method, path, str(response.status_code)).observe(
            time.perf_counter() - start
        )
        return response

    return app
