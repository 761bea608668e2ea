"""/openai/v1/files: the farm's files in OpenAI's shape."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from app.api import files as native
from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.openai.errors import OpenAIRoute
from app.schemas.openai import OpenAIFile, OpenAIFileDeleted, OpenAIFileList
from app.services import files as file_service
from app.services import openai as service
from app.storage import CHUNK
from app.unit_of_work import run_retrying

router = APIRouter(prefix="/files", route_class=OpenAIRoute)


@router.post("", summary="Upload a file")
def upload_file(
    file: Annotated[UploadFile, File(description="The file's bytes (JSONL for batches).")],
    purpose: Annotated[str, Form(description="`batch`, or `fine-tune` for training data.")],
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
) -> OpenAIFile:
    """Multipart `file` and `purpose` (`batch`, or `fine-tune` for training data), streamed
    into the store with the native upload's limits."""
    # OpenAI answers 200 here, not 201; the client accepts either, scripts may check.
    if purpose not in service.PURPOSES_IN:
        raise service.BadRequest(f"purpose must be one of: {', '.join(service.PURPOSES_IN)}")
    chunks = iter(lambda: file.file.read(CHUNK), b"")
    created = file_service.create_file(
        session,
        tenant,
        service.PURPOSES_IN[purpose],
        file.filename or "upload",
        chunks,
        settings.max_upload_bytes,
    )
    return service.file_public(created)


@router.get("", summary="List files")
def list_files(
    session: SessionDep,
    tenant: TenantDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> OpenAIFileList:
    """The tenant's uploaded and result files, newest first."""
    found, has_more = service.list_files(
        session, tenant, purpose=purpose, limit=limit, after=after, newest_first=order == "desc"
    )
    return OpenAIFileList(
        data=[service.file_public(f) for f in found],
        first_id=found[0].id if found else None,
        last_id=found[-1].id if found else None,
        has_more=has_more,
    )


@router.get("/{file_id}", summary="Retrieve a file")
def get_file(file_id: str, session: SessionDep, tenant: TenantDep) -> OpenAIFile:
    """A file's metadata in OpenAI's shape."""
    return service.file_public(file_service.get_file(session, tenant, file_id))


@router.get("/{file_id}/content", summary="Retrieve a file's content")
def get_file_content(file_id: str, session: SessionDep, tenant: TenantDep) -> StreamingResponse:
    """The file's bytes, streamed (a batch's output or error file is JSONL in OpenAI's shape)."""
    return native.get_file_content(file_id, session, tenant)


@router.delete("/{file_id}", summary="Delete a file")
def delete_file(file_id: str, tenant: TenantDep) -> OpenAIFileDeleted:
    """Remove a file; refused while a batch that has not ended reads it."""
    uri = run_retrying(lambda session: file_service.delete_file(session, tenant, file_id))
    file_service.remove_object(uri)
    return OpenAIFileDeleted(id=file_id)
