"""The planner's step for an archive of images or audio files: made into the job's JSONL
item file.

Called by plan_job before it splits the input; the conversion itself is the runtime's
(workers/runtime/image_archive.py). See docs/decisions/0013-image-pipeline.md.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.config import get_settings
from app.ids import new_id
from app.models import Job
from app.services import planning
from app.services.results import ResultFile
from app.storage import get_store
from app.unit_of_work import session_scope
from workers.reliability import db_retry
from workers.runtime.archives import ArchiveRefused
from workers.runtime.image_archive import archive_items, looks_like_archive


class InputRefused(Exception):
    """The archive cannot be a job's input; code and message fail the job."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_archive(uri: str) -> bool:
    with get_store().open(uri, "rb") as f:
        return looks_like_archive(f.read(512))


def items_from_archive(job_id: str, owner: str, input_uri: str) -> str | None:
    """The uri of the item file made from the job's archive, attached to the job; None when
    this planner lost the job on the way. Raises InputRefused."""
    settings = get_settings()

    def read_job() -> tuple[str, str, str | None]:
        with session_scope() as session:
            job = session.get_one(Job, job_id)
            return job.tenant_id, job.input_file_id or "", planning.model_task(session, job)

    tenant_id, source_file_id, task = db_retry(read_job)
    speech = task == "automatic-speech-recognition"
    if task is None or not (task.startswith("image-") or speech):
        raise InputRefused(
            "invalid_input",
            "an archive input is for image and speech models; other models read JSONL",
        )
    store = get_store()
    uri = store.uri("tenants", tenant_id, "files", new_id("file"))
    lines = 0
    with tempfile.TemporaryDirectory(prefix="modelfarm-archive-") as tmp:
        local = Path(tmp) / "input"
        # zipfile needs to seek, and the store may be S3: a local copy to read from.
        with store.open(input_uri, "rb") as source, open(local, "wb") as target:
            shutil.copyfileobj(source, target, 1024 * 1024)

        def counted() -> Iterator[bytes]:
            nonlocal lines
            for line in archive_items(
                local,
                settings.model_max_unpacked_bytes,
                settings.model_max_archive_members,
                settings.max_audio_bytes if speech else settings.max_image_bytes,
                "audio" if speech else "image",
            ):
                lines += 1
                yield line

        try:
            size, sha256 = store.write_stream(uri, counted(), limit=None)
        except ArchiveRefused as exc:
            store.delete(uri)
            raise InputRefused("invalid_archive", str(exc)) from None
    if lines == 0:
        store.delete(uri)
        raise InputRefused("empty_input", "the archive holds no files")
    made = ResultFile(uri, size, sha256, lines)

    def attach() -> bool:
        with session_scope() as session:
            return planning.attach_archive_input(
                session, job_id, owner, source_file_id, made, "audio" if speech else "images"
            )

    if not db_retry(attach):
        store.delete(uri)
        return None
    return uri
