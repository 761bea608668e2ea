"""Archives of images as job input: one item per image, in archive order (docs/decisions/0013).

An inference job whose input file is a .zip or .tar is turned, when it is planned, into the
farm's ordinary JSONL item file: a line `{"custom_id": <member path>, "input": {"image":
<base64>}}` per file. Everything after that (shards, retries, error files, assembly in input
order) is what every other job does. A training job reads its archive here as well: one folder
per class. Members pass archives.py's checks (no links, no `..`, caps on members and bytes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

from workers.runtime.archives import ArchiveRefused, iter_archive_files
from workers.runtime.images import TOO_LARGE_MEMBER
from workers.runtime.items import dump_line
from workers.runtime.training import TrainingError

_GZIP, _BZIP2, _XZ = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")


def looks_like_archive(head: bytes) -> bool:
    """Whether a file's first 512 bytes are a zip, a tar, or a compressed stream (a JSONL
    file starts with `{` or whitespace, never with these)."""
    if head.startswith(_ZIP + (_GZIP, _BZIP2, _XZ)):
        return True
    return len(head) >= 262 and head[257:262] == b"ustar"


def skipped(name: str) -> bool:
    """Files a desktop archiver adds beside the pictures (macOS's __MACOSX/ and ._ twins,
    .DS_Store, Thumbs.db): hidden names are not items."""
    parts = name.split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1] == "Thumbs.db"


def archive_items(
    archive: Path, max_bytes: int, max_members: int, max_image_bytes: int, key: str = "image"
) -> Iterator[bytes]:
    """The JSONL item lines of an archive of images (or of audio files, with key "audio").
    Raises ArchiveRefused."""
    for name, data, size in iter_archive_files(archive, max_bytes, max_members, max_image_bytes):
        if skipped(name):
            continue
        if data is None:  # over the per-image cap: an item that is its error line
            yield dump_line({"custom_id": name, "input": {TOO_LARGE_MEMBER: size}})
            continue
        encoded = base64.b64encode(data).decode("ascii")
        yield dump_line({"custom_id": name, "input": {key: encoded}})


def training_members(
    archive: Path, max_bytes: int, max_members: int, max_image_bytes: int
) -> Iterator[tuple[str, bytes]]:
    """(path, encoded image) of each picture of a training archive, one at a time in archive
    order, so that the caller holds one picture's bytes at once, not the archive's. Raises
    TrainingError."""
    try:
        for name, data, size in iter_archive_files(
            archive, max_bytes, max_members, max_image_bytes
        ):
            if skipped(name):
                continue
            if data is None:
                raise TrainingError(
                    "invalid_training_data",
                    f"{name} is {size} bytes; an image may be {max_image_bytes} (MAX_IMAGE_BYTES)",
                )
            yield name, data
    except ArchiveRefused as exc:
        raise TrainingError("invalid_training_data", str(exc)) from None


def class_labels(names: list[str]) -> list[str]:
    """The class of each picture of a training archive: its folder, one folder per class (an
    archive of one top folder around the class folders is common and allowed). Raises
    TrainingError."""
    folders = [name.split("/")[:-1] for name in names]
    if folders and all(len(f) >= 2 for f in folders) and len({f[0] for f in folders}) == 1:
        folders = [f[1:] for f in folders]  # my-images/cat/1.png: cat is the class
    for name, folder in zip(names, folders, strict=True):
        if len(folder) != 1:
            raise TrainingError(
                "invalid_training_data",
                f"{name}: a training archive holds one folder per class, images inside",
            )
    if not names:
        raise TrainingError("invalid_training_data", "the training archive holds no images")
    return [folder[0] for folder in folders]
