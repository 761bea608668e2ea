"""Model archives: hostile tar and zip files built here, refused before they write a byte."""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.runtime.archives import ArchiveRefused, extract_archive

MB = 1024 * 1024
CAP = 4 * MB


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _extract(archive: Path, dest: Path, max_bytes: int = CAP, members: int = 100) -> list[str]:
    dest.mkdir(exist_ok=True)
    return extract_archive(archive, dest, max_bytes, members)


def _refused(archive: Path, tmp_path: Path, words: str, **caps: int) -> None:
    dest = tmp_path / "out"
    with pytest.raises(ArchiveRefused, match=words):
        _extract(archive, dest, **caps)
    # Refused before anything was written: the caller only has an empty folder to remove.
    assert list(dest.iterdir()) == []


def test_a_model_folder_unpacks(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "m.tar.gz",
        [
            (_info("model", tarfile.DIRTYPE), None),
            (_info("model/config.json"), b"{}"),
            (_info("model/model.safetensors"), b"x" * 1000),
        ],
        "w:gz",
    )
    assert sorted(_extract(archive, tmp_path / "out")) == [
        "model/config.json",
        "model/model.safetensors",
    ]
    assert (tmp_path / "out/model/model.safetensors").read_bytes() == b"x" * 1000


@pytest.mark.parametrize(
    "member, words",
    [
        (_info("link", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_info("hard", tarfile.LNKTYPE, "config.json"), "is a link"),
        (_info("dev", tarfile.CHRTYPE), "is a special file"),
        (_info("fifo", tarfile.FIFOTYPE), "is a special file"),
        (_info("/abs/config.json"), "points outside"),
        (_info("../escape.json"), "points outside"),
        (_info("a/../../escape.json"), "points outside"),
        (_info("c:\\windows.json"), "forbidden character"),
    ],
    ids=["symlink", "hardlink", "device", "fifo", "absolute", "dotdot", "nested-dotdot", "bslash"],
)
def test_tar_members_that_are_not_plain_files_inside_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, words: str
) -> None:
    data = None if member.type != tarfile.REGTYPE else b"{}"
    archive = _tar(tmp_path / "bad.tar", [(_info("config.json"), b"{}"), (member, data)])
    _refused(archive, tmp_path, words)


def test_nested_long_symlinks_cannot_write_outside(tmp_path: Path) -> None:
    """The shape of CVE-2025-4517: a chain of long symlinks that walks out of the folder,
    then a file written through it. Any link is refused, so the outside stays untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    deep = "d" * 200
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    path = ""
    for _ in range(8):
        members.append((_info(f"{path}{deep}", tarfile.DIRTYPE), None))
        members.append((_info(f"{path}l", tarfile.SYMTYPE, deep), None))
        path += "l/"
    members.append((_info("escape", tarfile.SYMTYPE, path + "../" * 8 + "../outside"), None))
    members.append((_info("escape/pwned"), b"written from the archive"))
    archive = _tar(tmp_path / "cve.tar", members)
    _refused(archive, tmp_path, "is a link")
    assert list(outside.iterdir()) == []


def test_a_gzip_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    # 64 MB of zeros in a ~64 KB download; the cap here is 4 MB.
    path = tmp_path / "bomb.tar.gz"
    with gzip.open(path, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w") as tf:
        info = _info("model.safetensors")
        info.size = 64 * MB
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    assert path.stat().st_size < 200_000
    _refused(path, tmp_path, "unpacks to more than")


def test_many_small_files_hit_the_member_cap(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "many.tar", [(_info(f"f{i}.json"), b"{}") for i in range(20)])
    _refused(archive, tmp_path, "more than 10 members", members=10)


def test_a_member_named_twice_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "dup.tar", [(_info("config.json"), b"{}")] * 2)
    _refused(archive, tmp_path, "twice")


def _zip(path: Path, add: Callable[[zipfile.ZipFile], None]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        add(zf)
    return path


def test_zip_bomb_and_zip_links_are_refused(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", lambda zf: zf.writestr("w.safetensors", b"\0" * 64 * MB))
    assert bomb.stat().st_size < 200_000
    _refused(bomb, tmp_path, "unpacks to more than")

    def add_link(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("config.json")
        info.create_system = 3  # unix, so the mode bits count
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")

    _refused(_zip(tmp_path / "link.zip", add_link), tmp_path, "is a link")
    _refused(
        _zip(tmp_path / "up.zip", lambda zf: zf.writestr("../up.json", "{}")),
        tmp_path,
        "points outside",
    )


def test_a_zip_member_larger_than_its_header_says_is_cut(tmp_path: Path) -> None:
    path = _zip(tmp_path / "liar.zip", lambda zf: zf.writestr("w.safetensors", b"\0" * MB))
    data = bytearray(path.read_bytes())
    # Lower the uncompressed size in the central directory (what infolist() reads) to 10.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises((ArchiveRefused, zipfile.BadZipFile)):
        _extract(path, tmp_path / "out")
    written = tmp_path / "out" / "w.safetensors"
    assert not written.exists() or written.stat().st_size <= 10 + 1


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 100)
    _refused(path, tmp_path, "must be a .zip or a .tar")
