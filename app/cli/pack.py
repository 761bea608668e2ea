"""`modelfarm models register NAME ./dir`: a model folder packed into the archive the farm takes.

Only regular files and folders go in, under names relative to the folder: a symlink would point
the farm's unpacker at something outside the model, so it is refused here, by name, rather than
by the worker's validation after the upload."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from app.cli.errors import USAGE, CliError


def pack_folder(folder: Path, into: Path) -> Path:
    """`folder` as `into/<name>.tar.gz`; CliError for a link or anything not a file."""
    members: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in sorted(dirs) + sorted(files):
            path = Path(root, entry)
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise CliError(f"{path} is not a plain file or folder; the farm takes none", USAGE)
            if path.is_file():
                members.append(path)
    if not members:
        raise CliError(f"{folder} holds no file to register", USAGE)
    archive = into / f"{folder.resolve().name or 'model'}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in members:
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return archive
