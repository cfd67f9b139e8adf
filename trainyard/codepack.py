"""A job's code directory as a deterministic tar.gz: same files, same bytes, same digest.

Packing sorts entries and clears what varies between checkouts (times, owners, umask beyond the
executable bit), so submitting the same tree twice stores one object. Unpacking uses tarfile's
`data` filter: no absolute paths, no `..`, no links leaving the directory, no device files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

EXCLUDED_DIRS = frozenset({".git", "__pycache__", ".trainyard", ".venv", ".mypy_cache", ".pytest_cache"})
EXCLUDED_SUFFIXES = (".pyc",)
MAX_CODE_BYTES = 1024**3
COPY_CHUNK_BYTES = 1024 * 1024


class CodeTooLarge(ValueError):
    """The packed directory is larger than the API accepts."""


def _entries(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        here = Path(dirpath)
        found.extend(here / d for d in dirnames)
        found.extend(here / f for f in sorted(filenames) if not f.endswith(EXCLUDED_SUFFIXES))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _tarinfo(archive: tarfile.TarFile, path: Path, name: str) -> tarfile.TarInfo:
    info = archive.gettarinfo(str(path), arcname=name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    executable = info.mode & stat.S_IXUSR
    info.mode = 0o755 if info.isdir() or executable else 0o644
    return info


def pack(root: Path, sink: BinaryIO) -> None:
    """Write `root`'s tree as tar.gz into `sink` (files, directories and symlinks as they are)."""
    with (
        gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, filename="") as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path in _entries(root):
            info = _tarinfo(archive, path, path.relative_to(root).as_posix())
            if info.isreg():
                with path.open("rb") as source:
                    archive.addfile(info, source)
            elif info.isdir() or info.issym():
                archive.addfile(info)  # sockets, fifos and devices are not code: left out


def pack_to_file(root: Path, target: Path, max_bytes: int = MAX_CODE_BYTES) -> str:
    """Pack `root` into `target`; returns the archive's sha256 (hex)."""
    if not root.is_dir():
        raise NotADirectoryError(f"code: {root} is not a directory")
    with target.open("wb") as sink:
        pack(root, sink)
    if target.stat().st_size > max_bytes:
        raise CodeTooLarge(f"code: {root} packs to {target.stat().st_size} bytes, more than {max_bytes}")
    return file_sha256(target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def unpack(archive_path: Path, dest: Path) -> None:
    """Unpack a code archive into `dest`, refusing anything that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, mode="r:*") as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # Python < 3.11.4 (Debian 12's 3.11.2): the same refusals, checked here
            archive.extractall(dest, members=_checked_members(archive, dest))


def _checked_members(archive: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """What the `data` filter lets through: regular files, directories and links inside `dest`,
    without setuid/setgid/sticky bits or write access for group and others."""
    root = dest.resolve()
    members = []
    for member in archive.getmembers():
        member.name = member.name.lstrip("/")  # as the filter does: below the directory
        target = (root / member.name).resolve()
        if not target.is_relative_to(root):
            raise tarfile.TarError(f"code archive: {member.name!r} would land outside the directory")
        if member.issym() or member.islnk():
            base = target.parent if member.issym() else root
            if os.path.isabs(member.linkname) or not (base / member.linkname).resolve().is_relative_to(root):
                raise tarfile.TarError(f"code archive: link {member.name!r} leaves the directory")
        elif not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"code archive: {member.name!r} is not a file, directory or link")
        member.mode &= 0o755
        members.append(member)
    return members
