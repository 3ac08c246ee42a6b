"""A zip of one DICOM series uploaded as an image: unpacked into a private folder, refusing anything unsafe.

A zip names its own paths and sizes, so nothing in it is trusted: a member whose path would leave the folder
(absolute, ``..``, a drive letter), a link, or more bytes than the server accepts in an upload (counted while
writing, not taken from the zip's headers: a zip bomb declares small sizes) is refused with one line.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from autoseg.errors import AutosegError

#: Members a series zip may hold (a large CT series is a few thousand slices)
MAX_MEMBERS = 100_000
_CHUNK = 1 << 20


class ArchiveTooLarge(AutosegError):
    """The zip unpacks to more than the server accepts (answered 413)."""


def is_zip(filename: str | None, head: bytes) -> bool:
    """Whether an upload is a zip: by its name's ending, else its first bytes.

    Examples
    --------
    >>> is_zip("C:\\\\exports\\\\CT.ZIP", b""), is_zip(None, b"PK\\x03\\x04..."), is_zip("a.nii.gz", b"\\x1f\\x8b")
    (True, True, False)
    """
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].lower()
    return name.endswith(".zip") or head[:4] == b"PK\x03\x04"


def _member_path(info: zipfile.ZipInfo, name: str) -> PurePosixPath | None:
    """The member's relative path (``None`` for a folder entry); refused when it could leave the folder."""
    if stat.S_ISLNK(info.external_attr >> 16):
        raise AutosegError(f"{name}: the zip holds a link ({info.filename}); send the files themselves")
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise AutosegError(f"{name}: unsafe path in the zip ({info.filename}): absolute or outside the archive")
    return None if info.is_dir() or not path.parts else path


def extract_zip(archive: Path, folder: Path, max_bytes: int, name: str) -> Path:
    """Unpack ``archive`` into the new folder ``folder``, writing at most ``max_bytes``.

    Parameters
    ----------
    name
        How messages name the upload (the client's file name).

    Raises
    ------
    AutosegError
        Not a zip, encrypted, an unsafe member path or a link, too many members.
    ArchiveTooLarge
        The members unpack to more than ``max_bytes`` (the partial folder is left to the caller to remove).
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise AutosegError(f"{name}: not a readable zip file ({e})") from None
    folder.mkdir(parents=True)
    with zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise AutosegError(f"{name}: {len(members)} members in the zip, at most {MAX_MEMBERS}")
        budget = max_bytes
        for info in members:
            path = _member_path(info, name)
            if path is None:
                continue
            if info.flag_bits & 0x1:
                raise AutosegError(f"{name}: the zip is encrypted ({info.filename})")
            dest = folder.joinpath(*path.parts)  # checked above: relative, no '..'
            budget = _copy_member(zf, info, dest, budget, name, max_bytes)
    return folder


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, budget: int, name: str,
                 max_bytes: int) -> int:
    """Write one member to ``dest``, counting its real bytes against ``budget``; the budget left."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(dest, "wb") as out:
            while chunk := src.read(min(_CHUNK, budget + 1)):
                budget -= len(chunk)
                if budget < 0:
                    raise ArchiveTooLarge(f"{name}: the zip unpacks to more than the {max_bytes / 1e6:g} MB "
                                          f"upload limit")
                out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
        raise AutosegError(f"{name}: damaged zip member {info.filename} ({e})") from None
    return budget


def remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
