from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.docs import V1_ERRORS, errors
from app.api.guards import GuardedRoute
from app.config import Settings
from app.models import File as FileRow
from app.models import FilePurpose, Tenant
from app.schemas.files import FileList, FilePublic
from app.services import files as file_service
from app.services import tenants
from app.services.errors import InvalidRequest, PayloadTooLarge
from app.storage import CHUNK, get_store
from app.unit_of_work import run_retrying

router = APIRouter(
    prefix="/v1/files", tags=["files"], route_class=GuardedRoute, responses=V1_ERRORS
)


@router.post("", status_code=201, summary="Upload a file", responses=errors(413))
def upload_file(
    file: Annotated[UploadFile, File(description="The bytes: JSONL, a skops file or an archive.")],
    purpose: Annotated[str, Form(description="batch, training or model.", examples=["batch"])],
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
) -> FilePublic:
    """Multipart upload: `file` and its `purpose`: `batch` (JSONL input lines), `training`
    (labelled JSONL) or `model` (a skops file or an archive to register). 413 over
    `MAX_UPLOAD_BYTES`."""
    if purpose not in file_service.UPLOAD_PURPOSES:
        allowed = ", ".join(p.value for p in file_service.UPLOAD_PURPOSES)
        raise InvalidRequest(f"purpose must be one of: {allowed}")
    created = store_upload(session, tenant, settings, FilePurpose(purpose), file)
    return FilePublic.model_validate(created, from_attributes=True)


def store_upload(
    session: Session, tenant: Tenant, settings: Settings, purpose: FilePurpose, file: UploadFile
) -> FileRow:
    """An upload copied to the store and its row added (not committed): 413 over
    `MAX_UPLOAD_BYTES` or over what the tenant may still store (the dashboard's form too)."""
    # What the tenant may still store caps this upload as the upload limit does (413 either
    # way); uploads that run at the same time may each see the same room
    # (docs/operations.md, Storage).
    room = tenants.storage_room(session, tenant)
    limit = settings.max_upload_bytes if room is None else min(room, settings.max_upload_bytes)
    # Starlette spools the part to a temporary file, so it is copied to the store in chunks.
    chunks = iter(lambda: file.file.read(CHUNK), b"")
    try:
        return file_service.create_file(
            session, tenant, purpose, file.filename or "upload", chunks, limit
        )
    except PayloadTooLarge:
        if room is None or room >= settings.max_upload_bytes:
            raise
        used = (tenant.max_storage_bytes or 0) - room
        raise tenants.storage_exceeded(tenant, used, "this file") from None


@router.get("", summary="List files", responses=errors(404))
def list_files(
    session: SessionDep,
    tenant: TenantDep,
    purpose: FilePurpose | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> FileList:
    """The tenant's files (uploads and the results its jobs wrote), newest first, a page at a
    time: pass the page's `last_id` as `after` for the next one while `has_more` is true.
    `purpose` keeps one kind: `batch`, `training`, `model`, `batch_output`, `batch_error`."""
    rows, has_more = file_service.list_files(
        session, tenant, purpose=purpose, limit=limit, after=after
    )
    return FileList(
        data=[FilePublic.model_validate(f, from_attributes=True) for f in rows],
        has_more=has_more,
        last_id=rows[-1].id if rows else None,
    )


@router.get("/{file_id}", summary="Get a file's metadata", responses=errors(404))
def get_file(file_id: str, session: SessionDep, tenant: TenantDep) -> FilePublic:
    """Name, purpose, size and SHA-256 of one of the tenant's files."""
    return FilePublic.model_validate(
        file_service.get_file(session, tenant, file_id), from_attributes=True
    )


def _attachment(filename: str) -> str:
    """RFC 6266: an ASCII fallback plus the real (UTF-8) name; headers are Latin-1 only."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.delete("/{file_id}", status_code=204, summary="Delete a file", responses=errors(404, 409))
def delete_file(file_id: str, tenant: TenantDep) -> Response:
    """The file and its bytes; 409 `file_in_use` while a job that has not ended reads it."""
    # Run again if it loses a lock race (with a DELETE of a job that names the file, say).
    uri = run_retrying(lambda session: file_service.delete_file(session, tenant, file_id))
    file_service.remove_object(uri)
    return Response(status_code=204)


@router.get(
    "/{file_id}/content",
    summary="Download a file",
    responses={**errors(404), 200: {"content": {"application/jsonl": {}}}},
)
def get_file_content(file_id: str, session: SessionDep, tenant: TenantDep) -> StreamingResponse:
    """The file's bytes, streamed: for a job's output or error file, JSONL in input order."""
    file = file_service.get_file(session, tenant, file_id)
    media = "application/jsonl" if file.filename.endswith(".jsonl") else "application/octet-stream"
    return StreamingResponse(
        get_store().iter_bytes(file.uri),
        media_type=media,
        headers={
            "Content-Length": str(file.bytes),
            "Content-Disposition": _attachment(file.filename),
        },
    )
