"""The artifact store: uploaded files, results and model artifacts, addressed by URI.

A local directory by default; any fsspec URL (``s3://bucket/prefix``) works the same way, with
remote artifacts copied to a local cache when a library needs a real path (model loading).
Writes to S3 are streamed: s3fs buffers one block (S3_BLOCK_SIZE) and sends it as a part of a
multipart upload, so an upload of any size holds one block in memory; reads fetch blocks too.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, BinaryIO

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from app.config import get_settings

CHUNK = 1024 * 1024


class TooLarge(Exception):
    """The stream went past the byte limit; what was written has been removed."""


class ArtifactStore:
    def __init__(
        self, root: str, cache_dir: Path, s3_options: dict[str, Any] | None = None
    ) -> None:
        if "://" not in root:
            root = Path(root).resolve().as_uri()
        self.root = root.rstrip("/")
        self.cache_dir = cache_dir
        self.s3_options = s3_options or {}

    def uri(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _fs(self, uri: str) -> tuple[Any, str]:
        # fsspec keeps one filesystem object per options and process (a new one after a fork).
        options = self.s3_options if uri.startswith(("s3://", "s3a://")) else {}
        found: tuple[Any, str] = url_to_fs(uri, **options)  # fsspec has no annotations
        return found

    def open(self, uri: str, mode: str = "rb") -> IO[Any]:
        fs, path = self._fs(uri)
        writing = "w" in mode or "a" in mode
        if isinstance(fs, LocalFileSystem):
            # The operating system's file, not fsspec's wrapper around it: input is read a line
            # at a time, and the wrapper's Python call per line cost 16% of a scikit-learn shard.
            try:
                return open(path, mode)  # noqa: SIM115 (the caller closes it)
            except FileNotFoundError:
                if not writing:
                    raise
            # The folder is made only when it is missing: most writes go to one that exists
            # (every inline job's input goes to its tenant's files/), and a mkdir that fails
            # with EEXIST cost each of them a system call and an exception.
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return open(path, mode)  # noqa: SIM115 (the caller closes it)
        if writing:
            fs.makedirs(fs._parent(path), exist_ok=True)
        remote = fs.open(path, mode)  # an fsspec file: io.IOBase, unannotated
        if mode == "rb":
            # fsspec's files read a line without a size limit; the standard buffered reader
            # over them bounds a line as the readers of item lines need (readline(size)).
            return io.BufferedReader(remote, buffer_size=CHUNK)
        opened: IO[Any] = remote
        return opened

    def write_stream(self, uri: str, chunks: Iterator[bytes], limit: int | None) -> tuple[int, str]:
        """Copy chunks to `uri` without holding them; returns (bytes, sha256 hex)."""
        digest = hashlib.sha256()
        size = 0
        with self.open(uri, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if limit is not None and size > limit:
                    break
                digest.update(chunk)
                out.write(chunk)
        if limit is not None and size > limit:
            self.delete(uri)
            raise TooLarge(f"larger than the limit of {limit} bytes")
        return size, digest.hexdigest()

    def write_file(self, uri: str, source: BinaryIO, limit: int | None = None) -> tuple[int, str]:
        return self.write_stream(uri, iter(lambda: source.read(CHUNK), b""), limit)

    def is_local(self, uri: str) -> bool:
        return isinstance(self._fs(uri)[0], LocalFileSystem)

    def sync_folder(self, uri: str) -> None:
        """On a local store, make the entry of the file `uri` in its folder durable (after the
        file's own fsync): a crash after the commit that records the file cannot lose it. An
        object store's write is durable once its upload completes."""
        fs, path = self._fs(uri)
        if isinstance(fs, LocalFileSystem):
            folder = os.open(Path(path).parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def size(self, uri: str) -> int:
        fs, path = self._fs(uri)
        return int(fs.size(path))

    def delete(self, uri: str, recursive: bool = False) -> None:
        fs, path = self._fs(uri)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    def remove_empty_folder(self, uri: str) -> None:
        """Remove a folder if it holds nothing (object stores have no empty folders anyway)."""
        fs, path = self._fs(uri)
        if isinstance(fs, LocalFileSystem):
            try:
                Path(path).rmdir()
            except OSError:
                pass  # not empty, or already gone

    def iter_bytes(self, uri: str) -> Iterator[bytes]:
        with self.open(uri, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def local_path(self, uri: str) -> Path:
        """A filesystem path for `uri` (a file or a directory), fetched into the cache if remote."""
        fs, path = self._fs(uri)
        if isinstance(fs, LocalFileSystem):
            return Path(path)
        # Stored artifacts are never rewritten in place (every attempt writes its own folder),
        # so a cached copy stays right for as long as its URI exists.
        target = self.cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:32]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Several processes of one machine may fetch the same artifact at once: each into
            # its own folder, and the first rename wins.
            tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
            shutil.rmtree(tmp, ignore_errors=True)
            fs.get(path, str(tmp), recursive=fs.isdir(path))
            try:
                tmp.rename(target)
            except OSError:
                if not target.exists():
                    raise
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
        return target

    def put_directory(self, local_dir: Path, uri: str) -> None:
        fs, path = self._fs(uri)
        fs.put(str(local_dir), path, recursive=True)


@lru_cache
def get_store() -> ArtifactStore:
    settings = get_settings()
    s3: dict[str, Any] = {"default_block_size": settings.s3_block_size}
    if settings.s3_endpoint_url:
        s3["endpoint_url"] = settings.s3_endpoint_url
    return ArtifactStore(settings.artifacts, settings.data_dir.resolve() / "cache", s3)
