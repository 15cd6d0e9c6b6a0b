"""Reading an archive safely: the regular files of a zip, a tar (``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` too)
or a folder, each as a :class:`Member` (normalised posix path, size, how to open it), for :mod:`.importers`.

Listing a source checks every member first and refuses the whole source when one has an absolute path, a ``..``
component, a link leading out of the archive, or is a device, fifo or other special file. A link to a file inside
the archive becomes a member that reads that file (no link is ever created); in a folder, links are followed to
files inside it only. Two members (files or links) with the same path, exactly or once normalised (``\\`` as
``/``, ``.`` and empty parts dropped, ``posixpath.normpath``, Unicode NFC), are refused too: which one would be
imported is not for the archive's order to decide. Nothing here writes.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .base import DatasetError

TEMP_PREFIX = ".bench-import-"  # an import's temp folder inside its root (never read as data)
DRIVE = re.compile(r"^[A-Za-z]:")
READ_ERRORS = (OSError, EOFError, RuntimeError, zipfile.BadZipFile, tarfile.TarError, zlib.error)


class ArchiveError(DatasetError):
    """An archive that is unsafe, unreadable or not in a published layout (the message names it)."""


@dataclass(frozen=True)
class Member:
    """A regular file of the source: its normalised posix path, its size and how the source opens it."""

    name: str
    size: int
    key: Any


def safe_name(raw: str, label: str) -> str:
    """A member name as a relative posix path; :class:`ArchiveError` for an absolute path or a ``..`` part."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or DRIVE.match(name):
        raise ArchiveError(f"refusing {label}: member {raw!r} has an absolute path (nothing was written)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"refusing {label}: member {raw!r} has a '..' component and would land outside the "
                           "target folder (nothing was written)")
    return "/".join(parts)


def _claim(seen: dict[str, str], name: str, raw: str, label: str) -> None:
    """Record member ``raw`` (safe name ``name``) in ``seen``; :class:`ArchiveError` naming both members when another
    one already has the same path, exactly or after normalisation (``normpath``, Unicode NFC)."""
    key = unicodedata.normalize("NFC", posixpath.normpath(name))
    if key in seen:
        first = seen[key]
        how = "the archive holds two entries of that name" if first == raw else "the same path once normalised"
        # names that differ only in their Unicode form look the same: shown with their code points
        lookalike = first != raw and unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", raw)
        show = ascii if lookalike else repr
        raise ArchiveError(f"refusing {label}: members {show(first)} and {show(raw)} are both {show(key)} ({how}; "
                           "which one to import would be a guess) (nothing was written)")
    seen[key] = raw


def _link_target(name: str, target: str, relative_to_archive: bool, label: str) -> str:
    """Where a link inside the archive points (an archive path); refused when it leads out of the archive."""
    outside = ArchiveError(f"refusing {label}: link {name!r} -> {target!r} points outside the archive "
                           "(nothing was written)")
    target = target.replace("\\", "/")
    if target.startswith("/") or DRIVE.match(target):
        raise outside
    parts = [] if relative_to_archive else name.split("/")[:-1]
    for p in target.split("/"):
        if p == "..":
            if not parts:
                raise outside
            parts.pop()
        elif p not in ("", "."):
            parts.append(p)
    return "/".join(parts)


def _resolve_links(files: dict[str, Member], links: dict[str, str], label: str) -> dict[str, Member]:
    """Each link inside the archive becomes a member that reads its target file (chains followed, 8 at most)."""
    out = dict(files)
    for name, target in links.items():
        for _ in range(8):
            if target not in links:
                break
            target = links[target]
        if target not in files:
            raise ArchiveError(f"refusing {label}: link {name!r} does not point to a file in the archive "
                               "(nothing was written)")
        out[name] = Member(name, files[target].size, files[target].key)
    return out


def _special(label: str, raw: str) -> ArchiveError:
    return ArchiveError(f"refusing {label}: member {raw!r} is a device, fifo or other special file "
                        "(nothing was written)")


class ZipSource:
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        self.zip = zipfile.ZipFile(path)

    def members(self) -> dict[str, Member]:
        files: dict[str, Member] = {}
        links: dict[str, str] = {}
        seen: dict[str, str] = {}
        for info in self.zip.infolist():
            name = safe_name(info.filename, self.label)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if info.is_dir() or kind == stat.S_IFDIR or not name:
                continue
            _claim(seen, name, info.filename, self.label)
            if kind == stat.S_IFLNK:
                links[name] = _link_target(name, self.zip.read(info).decode("utf-8", "replace"), False, self.label)
            elif kind in (0, stat.S_IFREG):
                files[name] = Member(name, info.file_size, info)
            else:
                raise _special(self.label, info.filename)
        return _resolve_links(files, links, self.label)

    def open(self, member: Member) -> IO[bytes]:
        return self.zip.open(member.key)

    def close(self) -> None:
        self.zip.close()


class TarSource:
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        self.tar = tarfile.open(path, "r:*")

    def members(self) -> dict[str, Member]:
        files: dict[str, Member] = {}
        links: dict[str, str] = {}
        seen: dict[str, str] = {}
        for info in self.tar.getmembers():
            name = safe_name(info.name, self.label)
            if info.isdir() or not name:
                continue
            _claim(seen, name, info.name, self.label)
            if info.issym() or info.islnk():
                links[name] = _link_target(name, info.linkname, info.islnk(), self.label)
            elif info.isfile():
                files[name] = Member(name, info.size, info)
            else:
                raise _special(self.label, info.name)
        return _resolve_links(files, links, self.label)

    def open(self, member: Member) -> IO[bytes]:
        fh = self.tar.extractfile(member.key)
        assert fh is not None  # members are regular files
        return fh

    def close(self) -> None:
        self.tar.close()


class FolderSource:
    """An archive already extracted. Links are followed only to files inside the folder; ``skip`` (the import's
    root, when it lies inside this folder) is not walked."""

    def __init__(self, path: Path, skip: Path | None = None) -> None:
        self.label = str(path)
        self.path = path.resolve()
        self.skip = skip

    def members(self) -> dict[str, Member]:
        out: dict[str, Member] = {}
        seen: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.path):
            here = Path(dirpath)
            for d in list(dirnames):
                if (here / d).is_symlink():
                    raise ArchiveError(f"{self.label}: {(here / d).relative_to(self.path)} is a link to a folder; "
                                       "put the real folder there")
                if d.startswith(TEMP_PREFIX) or (self.skip is not None and here / d == self.skip):
                    dirnames.remove(d)
            for f in filenames:
                path = here / f
                name = path.relative_to(self.path).as_posix()
                _claim(seen, name, name, self.label)
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    target = path.resolve()
                    if not target.is_relative_to(self.path) or not target.is_file():
                        raise ArchiveError(f"refusing {self.label}: link {name!r} does not point to a file inside it")
                    path = target
                elif not stat.S_ISREG(mode):
                    raise _special(self.label, name)
                out[name] = Member(name, path.stat().st_size, path)
        return out

    def open(self, member: Member) -> IO[bytes]:
        return open(member.key, "rb")

    def close(self) -> None:
        pass


def open_source(source: Path, root: Path) -> ZipSource | TarSource | FolderSource:
    if source.is_dir():
        resolved = source.resolve()
        return FolderSource(source, root if root != resolved and root.is_relative_to(resolved) else None)
    if not source.is_file():
        raise ArchiveError(f"{source} does not exist")
    try:
        if zipfile.is_zipfile(source):
            return ZipSource(source)
        if tarfile.is_tarfile(source):
            return TarSource(source)
    except READ_ERRORS as err:
        raise ArchiveError(f"{source}: cannot read the archive: {err}") from None
    raise ArchiveError(f"{source} is neither a zip nor a tar archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) "
                       "nor a folder (or it is truncated or damaged)")


def read_member(source: Any, member: Member) -> bytes:
    try:
        with source.open(member) as fh:
            return fh.read()
    except READ_ERRORS as err:
        raise ArchiveError(f"{source.label}: cannot read {member.name}: {err}") from None
