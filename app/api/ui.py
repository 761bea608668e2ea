"""The jobs dashboard at /ui: server-rendered pages over the same services as /v1.

A user logs in by posting an API key; the key is kept in an HttpOnly, SameSite=Strict cookie
(never in a URL) and checked on every request with the same lookup as a bearer key. The pages
poll a partial of themselves every 2 s (app/ui/static/ui.js); everything is served here, so
the dashboard works without internet.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Annotated, Any

from anyio import from_thread
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app import dispatch
from app.api.deps import SessionDep
from app.api.files import get_file_content
from app.api.jobs import cancel_job, retry_job
from app.api.ui_security import DashboardGuard, login_wait
from app.config import get_settings
from app.models import Job, Tenant
from app.schemas.jobs import JobPublic
from app.services import dashboard, farm_stats, webhooks
from app.services import jobs as job_service
from app.services.errors import NotFound, ServiceError
from app.services.pace import pace
from app.services.tenants import authenticate
from app.unit_of_work import commit

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
COOKIE = "modelfarm_ui_key"
JOBS_SHOWN = 50
EVENTS_SHOWN = 100

templates = Jinja2Templates(directory=UI_DIR / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def _done_percent(job: Job) -> int:
    if job.counts_total:
        return min(100, round(100 * (job.counts_succeeded + job.counts_failed) / job.counts_total))
    return 100 if job.is_terminal else 0


def _duration(seconds: float) -> str:
    """9 s, 2 m 05 s, 1 h 02 m: an ETA read at a glance."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} m {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} m"


templates.env.filters["when"] = _when
templates.env.filters["duration"] = _duration
templates.env.globals["done_percent"] = _done_percent
templates.env.globals["pace"] = pace


def install_ui(app: FastAPI) -> None:
    app.add_middleware(DashboardGuard)  # CSP, no framing, same-origin forms (ui_security.py)
    app.mount("/ui/static", StaticFiles(directory=UI_DIR / "static"), name="ui-static")
    app.include_router(router)


def _tenant(request: Request, session: SessionDep) -> Tenant | None:
    key = request.cookies.get(COOKIE, "").strip()
    if not key:
        return None
    tenant = authenticate(session, key)
    commit(session)  # the lookup's transaction ends: its connection goes back
    return tenant


def _page(request: Request, name: str, tenant: Tenant, **context: Any) -> HTMLResponse:
    """The page, or just its live part (`_<page>_live.html`-style partial) when the poller
    asks with `?partial=1`."""
    if request.query_params.get("partial") == "1":
        name = PARTS[name]
    response = templates.TemplateResponse(request, name, {"tenant": tenant, **context})
    response.headers["Cache-Control"] = "no-store"  # a key-protected page, always fresh
    return response


PARTS = {
    "jobs.html": "_jobs_table.html",
    "job.html": "_job_live.html",
    "pools.html": "_pools_table.html",
}


def _login_needed(request: Request) -> Response:
    if request.query_params.get("partial") == "1":
        return Response("log in again", status_code=401)
    return RedirectResponse("/ui/login", status_code=303)


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login")
def login(
    request: Request, session: SessionDep, key: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    settings = get_settings()
    client = request.client.host if request.client else "unknown"
    # Attempts per client address first (guessing keys), then logins per tenant.
    wait = from_thread.run(login_wait, client, None, settings.ui_login_attempts_per_minute)
    if wait:
        return _too_many(request, wait)
    tenant = authenticate(session, key.strip()) if key.strip() else None
    if tenant is None:
        return templates.TemplateResponse(
            request, "login.html", {"error": "That API key is not valid."}, status_code=401
        )
    wait = from_thread.run(login_wait, client, tenant.id, settings.ui_logins_per_tenant_per_minute)
    if wait:
        return _too_many(request, wait)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        COOKIE,
        key.strip(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
        max_age=12 * 3600,
    )
    return response


def _too_many(request: Request, wait: int) -> Response:
    error = f"Too many login attempts; try again in {wait} s."
    response = templates.TemplateResponse(request, "login.html", {"error": error}, status_code=429)
    response.headers["Retry-After"] = str(wait)
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("", response_model=None)
def jobs_page(request: Request, session: SessionDep) -> Response:
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    jobs, has_more = job_service.list_jobs(session, tenant, limit=JOBS_SHOWN)
    return _page(request, "jobs.html", tenant, jobs=jobs, has_more=has_more)


@router.get("/jobs/{job_id}", response_model=None)
def job_page(job_id: str, request: Request, session: SessionDep) -> Response:
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    try:
        job = job_service.get_job(session, tenant, job_id)
    except NotFound:
        return templates.TemplateResponse(
            request, "missing.html", {"tenant": tenant, "job_id": job_id}, status_code=404
        )
    events, more_events = job_service.list_events(session, job.id, limit=EVENTS_SHOWN)
    deliveries, _ = webhooks.list_for_job(session, job.id, limit=20, after=None)
    return _page(
        request,
        "job.html",
        tenant,
        job=job,
        events=events,
        more_events=more_events,
        errors=dashboard.error_lines(session, tenant, job),
        deliveries=deliveries,
    )


@router.post("/jobs/{job_id}/cancel", response_model=None)
def cancel(job_id: str, request: Request, session: SessionDep) -> Response:
    """The job page's Cancel button: as `POST /v1/jobs/{id}/cancel`, then back to the job."""
    return _act(request, session, job_id, lambda tenant: cancel_job(job_id, tenant))


@router.post("/jobs/{job_id}/retry", response_model=None)
def retry(job_id: str, request: Request, session: SessionDep) -> Response:
    """The job page's Retry button: a new job over the failed items, then its page."""
    return _act(request, session, job_id, lambda tenant: retry_job(job_id, session, tenant))


def _act(
    request: Request, session: Session, job_id: str, action: Callable[[Tenant], JobPublic]
) -> Response:
    # The cookie is SameSite=Strict, so another site's form cannot post here with it.
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    try:
        job = action(tenant)
    except ServiceError as exc:
        back = f'<p><a href="/ui/jobs/{escape(job_id)}">Back to the job</a></p>'
        return HTMLResponse(f"<p>{escape(exc.message)}</p>{back}", status_code=exc.status_code)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


@router.get("/files/{file_id}", response_model=None)
def download(file_id: str, request: Request, session: SessionDep) -> Response:
    """A file of the logged-in tenant, as `GET /v1/files/{id}/content` sends it: the job page
    links its input, output and error files here (the key is in the cookie, not the URL)."""
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    try:
        return get_file_content(file_id, session, tenant)
    except NotFound:
        return Response("no such file", status_code=404)


@router.get("/pools", response_model=None)
def pools_page(request: Request, session: SessionDep) -> Response:
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    workers = farm_stats.live_workers(session)
    mine = dashboard.active_jobs_by_queue(session, tenant)
    read = dispatch.queue_depths()
    depths = read or {}
    pools = [
        {
            "name": pool,
            "workers": workers.get(pool, 0),
            "depth": depths.get(pool),
            "queued": mine.get(pool, {}).get("queued", 0),
            "running": mine.get(pool, {}).get("running", 0)
            + mine.get(pool, {}).get("cancelling", 0),
        }
        for pool in farm_stats.POOLS
    ]
    return _page(request, "pools.html", tenant, pools=pools, broker_ok=read is not None)
