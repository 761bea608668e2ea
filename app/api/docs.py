"""Interactive API docs that work without internet, and what the OpenAPI schema teaches.

Swagger UI and ReDoc come from the `fastapi-offline` package, which ships their bundles; the
farm serves them itself, so /docs is never a blank page on a machine without a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.schemas.errors import ErrorResponse

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
BEARER = "bearerAuth"

ERROR_MEANINGS = {
    401: "No `Authorization: Bearer <api key>` header, or the key is not valid.",
    404: "No such object for this tenant (another tenant's id answers 404 too).",
    409: "The request conflicts with the object's state (see `error.code`).",
    413: "The body or upload is over the farm's size limit.",
    422: "The request is not valid: the message names the fields.",
    429: "Rate limit or quota reached; `Retry-After` says when to try again.",
    503: "PostgreSQL or the broker is not reachable; retry later.",
}

DESCRIPTION = """Models as a service for batch work: upload a JSONL file, submit a job,
walk away, and get the results by polling (`Prefer: wait=N`) or a signed webhook.

Every `/v1` call needs `Authorization: Bearer <api key>` (press **Authorize** and paste the
key). Every error answer is `{"error": {"code": "...", "message": "..."}}`."""


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: each status with the error shape."""
    return {s: {"model": ErrorResponse, "description": ERROR_MEANINGS[s]} for s in statuses}


#: What any authenticated /v1 call may answer besides its own errors.
V1_ERRORS = errors(401, 422, 429, 503)


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets, and document the bearer key in the schema."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    app.include_router(_pages(app))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]


def _pages(app: FastAPI) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @router.get("/redoc")
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # a font CDN is a CDN too
        )

    return router


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        schema.setdefault("components", {})["securitySchemes"] = {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `modelfarm keys create --tenant NAME` prints one.",
            }
        }
        for path, operations in schema["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for operation in operations.values():
                # The key is read from the header by the tenant dependency; the security
                # scheme describes it, so the raw header parameter would only say it twice.
                params = [
                    p
                    for p in operation.get("parameters", [])
                    if not (p["in"] == "header" and p["name"].lower() == "authorization")
                ]
                if params:
                    operation["parameters"] = params
                else:
                    operation.pop("parameters", None)
                operation["security"] = [{BEARER: []}]
        app.openapi_schema = schema
    return app.openapi_schema
