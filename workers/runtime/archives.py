"""Unpacking a tenant's model archive (.zip, .tar, .tar.gz ...): data within caps, nothing else.

Nothing is left to `tarfile`'s or `zipfile`'s own extraction or to the filters of the Python in
use (they have had bypasses). Every member is checked before a byte is written:

- regular files and directories only: no symlinks, hard links, devices or FIFOs;
- relative names without `..`, backslashes or NUL, each written at most once;
- at most `max_members` members and `max_bytes` unpacked bytes in all, counted from the
  headers first and again from the bytes actually written, so a bomb stops at the cap.

Files are created with O_EXCL | O_NOFOLLOW under a directory that holds nothing but what this
module made. On any refusal the caller removes the directory; messages never name a path.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

CHUNK = 1024 * 1024


class ArchiveRefused(Exception):
    """The archive is not accepted; the message says why, in the uploader's terms."""


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_members: int) -> list[str]:
    """Unpack into the empty directory `dest`; returns the regular files' relative names."""
    try:
        if zipfile.is_zipfile(archive):
            return _extract_zip(archive, dest, max_bytes, max_members)
        if tarfile.is_tarfile(archive):
            return _extract_tar(archive, dest, max_bytes, max_members)
    except ArchiveRefused:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        # OSError messages name paths; the kind of failure is what the uploader can act on.
        raise ArchiveRefused(f"the archive cannot be unpacked ({type(exc).__name__})") from None
    raise ArchiveRefused("a model archive must be a .zip or a .tar (optionally compressed)")


class _Budget:
    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.max_bytes, self.max_members = max_bytes, max_members
        self.bytes = self.members = 0
        self.names: set[str] = set()

    def admit(self, raw_name: str, is_dir: bool, size: int) -> str:
        """Check one member's header; returns its normalised relative name."""
        self.members += 1
        if self.members > self.max_members:
            raise ArchiveRefused(f"the archive has more than {self.max_members} members")
        name = _safe_name(raw_name)
        if name in self.names:
            raise ArchiveRefused(f"the archive holds {name!r} twice")
        self.names.add(name)
        if not is_dir:
            self.add(size)
        return name

    def add(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise ArchiveRefused(f"the archive unpacks to more than {self.max_bytes} bytes")


def _safe_name(raw: str) -> str:
    if "\x00" in raw or "\\" in raw:
        raise ArchiveRefused(f"archive member {raw!r} has a forbidden character")
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveRefused(f"archive member {raw!r} points outside the archive")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise ArchiveRefused(f"archive member {raw!r} has no name")
    return "/".join(parts)


# -- tar ----------------------------------------------------------------------------------------


def _tar_members(archive: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    # Stream mode ("r|*"): one forward pass, no seeking, any compression tarfile knows.
    with tarfile.open(archive, mode="r|*") as tf:
        for member in tf:
            yield tf, member


def _check_tar_member(member: tarfile.TarInfo, budget: _Budget, declared: bool = True) -> str:
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise ArchiveRefused(f"archive member {member.name!r} is a {kind}; only files are allowed")
    # Declared sizes count in the header pass; the write pass counts the bytes it writes.
    return budget.admit(member.name, member.isdir(), member.size if declared else 0)


def _extract_tar(archive: Path, dest: Path, max_bytes: int, max_members: int) -> list[str]:
    headers = _Budget(max_bytes, max_members)
    for _, member in _tar_members(archive):  # every header first: nothing written yet
        _check_tar_member(member, headers)
    written = _Budget(max_bytes, max_members)
    files = []
    for tf, member in _tar_members(archive):
        name = _check_tar_member(member, written, declared=False)
        if member.isdir():
            _make_dir(dest, name)
            continue
        source = tf.extractfile(member)
        if source is None:
            raise ArchiveRefused(f"archive member {name!r} cannot be read")
        _write(dest, name, source, member.size, written)
        files.append(name)
    return files


# -- zip ----------------------------------------------------------------------------------------


def _zip_is_dir(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: written where modes are not kept
        what = "link" if kind == stat.S_IFLNK else "special file"
        raise ArchiveRefused(
            f"archive member {info.filename!r} is a {what}; only files are allowed"
        )
    return info.is_dir() or kind == stat.S_IFDIR


def _extract_zip(archive: Path, dest: Path, max_bytes: int, max_members: int) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        headers = _Budget(max_bytes, max_members)
        names = [headers.admit(i.filename, _zip_is_dir(i), i.file_size) for i in infos]
        written = _Budget(max_bytes, max_members)
        files = []
        for info, name in zip(infos, names, strict=True):
            if _zip_is_dir(info):
                _make_dir(dest, name)
                continue
            with zf.open(info) as source:
                _write(dest, name, source, info.file_size, written)
            files.append(name)
        return files


# -- writing ------------------------------------------------------------------------------------


def _make_dir(dest: Path, name: str) -> None:
    os.makedirs(dest / name, mode=0o755, exist_ok=True)


def _write(dest: Path, name: str, source: IO[bytes], declared: int, budget: _Budget) -> None:
    target = dest / name
    os.makedirs(target.parent, mode=0o755, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(target, flags, 0o644)
    size = 0
    with os.fdopen(fd, "wb") as out:
        # Read at most one byte past the declared size: a header that lies is caught there.
        while chunk := source.read(min(CHUNK, declared - size + 1)):
            size += len(chunk)
            if size > declared:
                raise ArchiveRefused(f"archive member {name!r} is larger than its header says")
            budget.add(len(chunk))
            out.write(chunk)


# -- reading members without unpacking (image archives as job input) ---------------------------


def iter_archive_files(
    archive: Path, max_bytes: int, max_members: int, max_file_bytes: int
) -> Iterator[tuple[str, bytes | None, int]]:
    """Every regular file of a .zip or .tar as (name, bytes, size), in archive order, after the
    same checks as extract_archive (every header first, then the bytes as they are read); the
    bytes are None for a file over max_file_bytes, which is never read. Directories are not
    yielded. Raises ArchiveRefused."""
    try:
        if zipfile.is_zipfile(archive):
            yield from _read_zip(archive, max_bytes, max_members, max_file_bytes)
            return
        if tarfile.is_tarfile(archive):
            yield from _read_tar(archive, max_bytes, max_members, max_file_bytes)
            return
    except ArchiveRefused:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ArchiveRefused(f"the archive cannot be read ({type(exc).__name__})") from None
    raise ArchiveRefused("an archive must be a .zip or a .tar (optionally compressed)")


def _read_member(source: IO[bytes], name: str, declared: int, budget: _Budget) -> bytes:
    data = source.read(declared + 1)  # one byte past the header's size: a lie is caught
    if len(data) > declared:
        raise ArchiveRefused(f"archive member {name!r} is larger than its header says")
    budget.add(len(data))
    return data


def _read_zip(
    archive: Path, max_bytes: int, max_members: int, max_file_bytes: int
) -> Iterator[tuple[str, bytes | None, int]]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        headers = _Budget(max_bytes, max_members)
        names = [headers.admit(i.filename, _zip_is_dir(i), i.file_size) for i in infos]
        read = _Budget(max_bytes, max_members)
        for info, name in zip(infos, names, strict=True):
            if _zip_is_dir(info):
                continue
            if info.file_size > max_file_bytes:
                yield name, None, info.file_size
                continue
            with zf.open(info) as source:
                yield name, _read_member(source, name, info.file_size, read), info.file_size


def _read_tar(
    archive: Path, max_bytes: int, max_members: int, max_file_bytes: int
) -> Iterator[tuple[str, bytes | None, int]]:
    headers = _Budget(max_bytes, max_members)
    for _, member in _tar_members(archive):
        _check_tar_member(member, headers)
    read = _Budget(max_bytes, max_members)
    for tf, member in _tar_members(archive):
        name = _check_tar_member(member, read, declared=False)
        if member.isdir():
            continue
        if member.size > max_file_bytes:
            yield name, None, member.size
            continue
        source = tf.extractfile(member)
        if source is None:
            raise ArchiveRefused(f"archive member {name!r} cannot be read")
        yield name, _read_member(source, name, member.size, read), member.size
