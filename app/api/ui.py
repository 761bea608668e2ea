"""The jobs dashboard at /ui: server-rendered pages over the same services as /v1.

A user logs in by posting an API key; the key is kept in an HttpOnly, SameSite=Strict cookie
(never in a URL) and checked on every request with the same lookup as a bearer key. The pages
poll a partial of themselves every 2 s (app/ui/static/ui.js); everything is served here, so
the dashboard works without internet.

It acts as the API does, through the same services: a job is submitted from an uploaded JSONL
(or one uploaded before), cancelled, retried, and its files downloaded; the tenant's files and
models are listed. Its forms carry a CSRF token (app/api/ui_security.py), and a submission the
farm refuses leaves no upload behind: the file's row is never committed and its bytes go.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from anyio import from_thread
from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep
from app.api.errors import errors_in_words
from app.api.files import get_file_content, store_upload
from app.api.jobs import cancel_job, retry_job
from app.api.ui_security import DashboardGuard, csrf_ok, csrf_token, login_wait
from app.broker import dispatch
from app.config import get_settings
from app.models import File as FileRow
from app.models import FilePurpose, Job, Tenant
from app.schemas.jobs import JobCreate, JobPublic
from app.services import dashboard, farm_stats, webhooks
from app.services import files as file_service
from app.services import jobs as job_service
from app.services import models as model_service
from app.services.errors import InvalidRequest, NotFound, ServiceError
from app.services.keys import authenticate
from app.services.pace import pace
from app.unit_of_work import commit

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
COOKIE = "modelfarm_ui_key"
JOBS_SHOWN = 50
EVENTS_SHOWN = 100
FILES_SHOWN = 50
PARAMS_CHARS = 20_000  #: the params box of the submit form
PRIORITIES = ("high", "normal", "low")
REFUSED_FORM = (
    "This form is out of date or was not sent from the dashboard's own page: reload the page "
    "and send it again."
)

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


def _key(request: Request) -> str:
    return request.cookies.get(COOKIE, "").strip()


def _tenant(request: Request, session: SessionDep) -> Tenant | None:
    key = _key(request)
    if not key:
        return None
    tenant = authenticate(session, key)
    commit(session)  # the lookup's transaction ends: its connection goes back
    return tenant


def _page(
    request: Request, name: str, tenant: Tenant, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """The page, or just its live part (`_<page>_live.html`-style partial) when the poller
    asks with `?partial=1`. Its forms carry the session's CSRF token (`csrf`)."""
    if request.query_params.get("partial") == "1" and name in PARTS:
        name = PARTS[name]
    response = templates.TemplateResponse(
        request,
        name,
        {"tenant": tenant, "csrf": csrf_token(_key(request)), **context},
        status_code=status_code,
    )
    response.headers["Cache-Control"] = "no-store"  # a key-protected page, always fresh
    return response


PARTS = {
    "jobs.html": "_jobs_table.html",
    "job.html": "_job_live.html",
    "pools.html": "_pools_table.html",
    "models.html": "_models_table.html",
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
def cancel(
    job_id: str, request: Request, session: SessionDep, csrf: Annotated[str, Form()] = ""
) -> Response:
    """The job page's Cancel button: as `POST /v1/jobs/{id}/cancel`, then back to the job."""
    return _act(request, session, job_id, csrf, lambda tenant: cancel_job(job_id, tenant))


@router.post("/jobs/{job_id}/retry", response_model=None)
def retry(
    job_id: str, request: Request, session: SessionDep, csrf: Annotated[str, Form()] = ""
) -> Response:
    """The job page's Retry button: a new job over the failed items, then its page."""
    return _act(request, session, job_id, csrf, lambda tenant: retry_job(job_id, session, tenant))


def _act(
    request: Request,
    session: Session,
    job_id: str,
    csrf: str,
    action: Callable[[Tenant], JobPublic],
) -> Response:
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    back = (f"/ui/jobs/{job_id}", "Back to the job")
    if not csrf_ok(_key(request), csrf):
        return _message(request, tenant, REFUSED_FORM, 403, back)
    try:
        job = action(tenant)
    except ServiceError as exc:
        session.rollback()
        return _message(request, tenant, exc.message, exc.status_code, back)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


def _message(
    request: Request, tenant: Tenant, text: str, status_code: int, back: tuple[str, str]
) -> HTMLResponse:
    """A refusal, in words, with the way back."""
    return _page(request, "message.html", tenant, status_code, text=text, back=back)


@router.get("/submit", response_model=None)
def submit_page(request: Request, session: SessionDep) -> Response:
    """The form that runs a model over a JSONL file: upload it (or pick one uploaded before),
    choose the model, its params and the job's priority."""
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    return _submit_form(request, session, tenant)


def _submit_form(
    request: Request,
    session: Session,
    tenant: Tenant,
    status_code: int = 200,
    error: str | None = None,
    chosen: dict[str, str] | None = None,
) -> HTMLResponse:
    models = [
        m
        for m in model_service.list_models(session, tenant)
        if any(v.status == "ready" for v in m.versions)
    ]
    files, _ = file_service.list_files(
        session, tenant, purpose=FilePurpose.BATCH, limit=FILES_SHOWN
    )
    session.commit()  # the reads' transaction gives its connection back
    return _page(
        request,
        "submit.html",
        tenant,
        status_code,
        models=models,
        files=files,
        priorities=PRIORITIES,
        error=error,
        chosen=chosen or {"model": "minilm", "params": "{}", "priority": "normal"},
        max_upload_bytes=get_settings().max_upload_bytes,
    )


@router.post("/jobs", response_model=None)
def submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form()] = "",
    model: Annotated[str, Form(max_length=140)] = "",
    params: Annotated[str, Form(max_length=PARAMS_CHARS)] = "",
    priority: Annotated[str, Form(max_length=20)] = "normal",
    file_id: Annotated[str, Form(max_length=64)] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """The submit form: the upload (bounded as `POST /v1/files` bounds it) and the job (as
    `POST /v1/jobs` checks it) in one transaction, so a refused job leaves no file counted
    against the tenant's storage; then the job's page."""
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    if not csrf_ok(_key(request), csrf):
        return _message(request, tenant, REFUSED_FORM, 403, ("/ui/submit", "Back to the form"))
    chosen = {"model": model, "params": params, "priority": priority, "file_id": file_id}
    stored: FileRow | None = None
    try:
        parsed = _params(params)
        uploading = file is not None and bool(file.filename)
        if uploading and file_id:
            raise InvalidRequest("choose a file to upload or one uploaded before, not both")
        if file is not None and uploading:
            stored = store_upload(session, tenant, settings, FilePurpose.BATCH, file)
            source = stored.id
        elif file_id:
            source = file_id
        else:
            raise InvalidRequest("choose a JSONL file to upload (or one uploaded before)")
        body = JobCreate(
            model=model or None,
            params=parsed,
            priority=priority,  # type: ignore[arg-type]  # checked by JobCreate
            input={"file_id": source},  # type: ignore[arg-type]
        )
        job = job_service.submit_job(
            session, tenant, body, max_inline_items=settings.max_inline_items
        )
    except (ValidationError, ServiceError) as exc:
        session.rollback()  # the upload's row goes, never committed
        if stored is not None:
            file_service.remove_object(stored.uri)
        if isinstance(exc, ValidationError):
            message, status = errors_in_words(exc.errors()), 422
        else:
            message, status = exc.message, exc.status_code
        return _submit_form(request, session, tenant, status, message, chosen)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


def _params(text: str) -> dict[str, Any]:
    """The params box: a JSON object (empty means none), refused in words."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"params is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest('params must be a JSON object, like {"batch_size": 64}')
    return value


@router.get("/files", response_model=None)
def files_page(request: Request, session: SessionDep) -> Response:
    """The tenant's files, newest first, a page at a time (`after`), of one `purpose` or all."""
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    purpose = request.query_params.get("purpose") or None
    purposes = [p.value for p in FilePurpose]
    if purpose not in (None, *purposes):
        purpose = None
    after = request.query_params.get("after") or None
    try:
        files, has_more = file_service.list_files(
            session, tenant, purpose=purpose, limit=FILES_SHOWN, after=after
        )
    except NotFound:  # a cursor that is not this tenant's: the first page
        files, has_more = file_service.list_files(
            session, tenant, purpose=purpose, limit=FILES_SHOWN
        )
    session.commit()
    return _page(
        request,
        "files.html",
        tenant,
        files=files,
        has_more=has_more,
        purpose=purpose,
        purposes=purposes,
    )


@router.get("/models", response_model=None)
def models_page(request: Request, session: SessionDep) -> Response:
    """Every model the tenant can name, builtins first, each version with its status and, for
    one that failed validation, why."""
    tenant = _tenant(request, session)
    if tenant is None:
        return _login_needed(request)
    models = model_service.list_models(session, tenant)
    session.commit()
    return _page(request, "models.html", tenant, models=models)


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
