"""Result files: written while hashed, and the final files assembled from shard parts."""

from __future__ import annotations

import hashlib
import os
from typing import IO, Any

from app.services.results import ResultFile
from app.storage import ArtifactStore


class PartLost(Exception):
    """A closed shard's part file is missing: its lines are lost, never an empty part."""


class ResultWriter:
    """A JSONL file in the store, hashed and counted while written, so registering it reads
    nothing back. Closed, it is durable (fsync'ed with its folder on a local store): the
    commit that records it comes after."""

    def __init__(self, store: ArtifactStore, uri: str, sync_folder: bool = True) -> None:
        """`sync_folder=False` for the first-closed of two files in one folder: the folder's
        fsync after the second one makes both entries durable (one fsync saved)."""
        self.uri = uri
        self._store = store
        self._local = store.is_local(uri)
        self._sync_folder = self._local and sync_folder
        self.lines = 0
        self.size = 0
        self._digest = hashlib.sha256()
        self._file: IO[Any] = store.open(uri, "wb")

    def write(self, lines: list[bytes]) -> None:
        if lines:
            self.write_bytes(b"".join(lines), len(lines))

    def write_bytes(self, data: bytes, lines: int) -> None:
        self._digest.update(data)
        self._file.write(data)
        self.size += len(data)
        self.lines += lines

    def close(self) -> None:
        if self._file.closed:
            return
        if self._local:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.close()
        if self._sync_folder:
            self._store.sync_folder(self.uri)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def result(self) -> ResultFile:
        return ResultFile(self.uri, self.size, self.sha256, self.lines)


def part_uris(store: ArtifactStore, tenant_id: str, job_id: str, stem: str) -> tuple[str, str]:
    """A shard attempt's own part files (`stem`: `shards.parts_stem`): a late attempt can never
    overwrite the winner's."""
    base = ("tenants", tenant_id, "jobs", job_id, "parts")
    return store.uri(*base, f"{stem}.out.jsonl"), store.uri(*base, f"{stem}.err.jsonl")


def final_uris(store: ArtifactStore, tenant_id: str, job_id: str, attempt: str) -> tuple[str, str]:
    """An assembly attempt's own result files: a late attempt never overwrites the winner's."""
    base = ("tenants", tenant_id, "jobs", job_id, "results", attempt)
    return store.uri(*base, "output.jsonl"), store.uri(*base, "errors.jsonl")


def append_part(store: ArtifactStore, uri: str, writer: ResultWriter) -> int:
    """Copy one part file into the final file, streaming; returns its lines. Every closed
    shard wrote both its part files (empty ones too), so a missing one is lost data."""
    try:
        f = store.open(uri, "rb")
    except FileNotFoundError:
        raise PartLost(uri) from None
    lines = 0
    with f:
        while chunk := f.read(1024 * 1024):
            lines += chunk.count(b"\n")
            writer.write_bytes(chunk, chunk.count(b"\n"))
    return lines
