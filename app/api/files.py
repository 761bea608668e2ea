from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.models import FilePurpose
from app.schemas.files import FilePublic
from app.services import files as file_service
from app.services.errors import InvalidRequest, PayloadTooLarge
from app.storage import CHUNK, get_store

router = APIRouter(prefix="/v1/files", tags=["files"])

# Multipart framing around the file itself; a request larger than the limit plus this is
# refused before its body is read.
MULTIPART_SLACK = 64 * 1024


@router.post("", status_code=201)
def upload_file(
    request: Request,
    file: UploadFile,
    purpose: Annotated[str, Form()],
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
) -> FilePublic:
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > settings.max_upload_bytes + MULTIPART_SLACK
    ):
        raise PayloadTooLarge(f"uploads are limited to {settings.max_upload_bytes} bytes")
    if purpose not in file_service.UPLOAD_PURPOSES:
        allowed = ", ".join(p.value for p in file_service.UPLOAD_PURPOSES)
        raise InvalidRequest(f"purpose must be one of: {allowed}")
    # Starlette spools the part to a temporary file, so it is copied to the store in chunks.
    chunks = iter(lambda: file.file.read(CHUNK), b"")
    created = file_service.create_file(
        session,
        tenant,
        FilePurpose(purpose),
        file.filename or "upload",
        chunks,
        settings.max_upload_bytes,
    )
    return FilePublic.model_validate(created, from_attributes=True)


@router.get("/{file_id}")
def get_file(file_id: str, session: SessionDep, tenant: TenantDep) -> FilePublic:
    return FilePublic.model_validate(
        file_service.get_file(session, tenant, file_id), from_attributes=True
    )


@router.get("/{file_id}/content")
def get_file_content(file_id: str, session: SessionDep, tenant: TenantDep) -> StreamingResponse:
    file = file_service.get_file(session, tenant, file_id)
    media = "application/jsonl" if file.filename.endswith(".jsonl") else "application/octet-stream"
    return StreamingResponse(
        get_store().iter_bytes(file.uri),
        media_type=media,
        headers={
            "Content-Length": str(file.bytes),
            "Content-Disposition": f'attachment; filename="{file.filename}"',
        },
    )
