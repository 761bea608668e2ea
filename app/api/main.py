"""The FastAPI application."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import files, health, jobs, models, openai, usage, waits, webhooks
from app.api.docs import DESCRIPTION, install_docs
from app.api.errors import install_error_handlers
from app.api.guards import RequestGuard
from app.api.ui import install_ui
from app.config import get_settings
from app.counters import HTTP_REQUESTS


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Sync routes run in anyio's thread pool: as many threads as the process has database
    # connections (app/db.py), so a request never waits inside the pool for a connection.
    to_thread.current_default_thread_limiter().total_tokens = get_settings().api_threads
    # scikit-learn (the training parameters' checks) takes a second or more to import: in the
    # background once the API serves, not in the first training submission that needs it.
    threading.Thread(
        target=importlib.import_module, args=("app.training_params",), name="warm", daemon=True
    ).start()
    waits.start_listening()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="modelfarm",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_docs
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(RequestGuard)
    for module in (health, files, models, jobs, webhooks, usage, openai):
        app.include_router(module.router)
    install_docs(app)
    install_ui(app)

    app.add_middleware(MeasureRequests)
    return app


class MeasureRequests:
    """Time every HTTP request by route and status (a plain ASGI middleware: Starlette's
    BaseHTTPMiddleware runs each request through an extra task and memory streams)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], path, str(status[0])).observe(
                time.perf_counter() - start
            )
