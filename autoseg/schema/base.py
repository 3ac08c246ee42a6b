"""JSON (de)serialisation of the frozen dataclasses that cross a stage boundary.

Every top-level record carries a ``schema_version``. Reading checks it, so a file written by an incompatible
autoseg version is a clear error instead of a confusing crash later. No pickle anywhere: JSON only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence, TypeVar

try:
    import fcntl
except ImportError:  # Windows: no flock, so stale temporaries are never taken for dead (see _lock)
    fcntl = None  # type: ignore[assignment]

from autoseg.errors import AutosegError

T = TypeVar("T")


#: ``field(metadata=OMIT_IF_NONE)``: the field is left out of the JSON form while it is ``None``, so adding an
#: optional field to a schema keeps every existing file (and its hash) unchanged.
OMIT_IF_NONE = {"omit_if_none": True}


def to_jsonable(obj: Any) -> Any:
    """Convert a dataclass tree (tuples, dicts, floats, ints, str, None) to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_if_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Build a value of type ``tp`` from its JSON form; ``where`` names the field for error messages."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except (TypeError, ValueError, KeyError) as e:
                errors.append(e.args[0] if e.args else str(e))
        # every branch's reason: "expected a number, got 'x'" says more than the list of types alone
        raise ValueError(f"{where}: {value!r} matches none of {args} ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f"{where}: missing field '{f.name}'")
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} entries, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        kt, vt = args
        return {_convert(kt, k, where): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported type {tp!r}")


def from_jsonable(cls: type[T], data: Any) -> T:
    """Inverse of :func:`to_jsonable` for the dataclass ``cls``; raises ValueError/TypeError/KeyError."""
    return _convert(cls, data, cls.__name__)


def canonical_json(obj: Any) -> str:
    """Stable JSON text (sorted keys, no whitespace variance) used for hashing."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))


def sha256_of(obj: Any) -> str:
    """sha256 hex digest of the canonical JSON form of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: Path) -> None:
    """Give a finished temporary file normal permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no second copy of an image on disk), or copy it (with its times) where links
    cannot be made: across file systems, or on one without hard links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


#: mkstemp/mkdtemp's random part of a temporary name: 8 of ``[a-z0-9_]``. A stale temporary is recognised by
#: exactly this shape, so another target's file (``.a.zip.x.<random>.tmp`` beside ``a.zip``) never matches.
_RANDOM = "[a-z0-9_]{8}"


def _lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; ``False`` when a live process holds one.

    ``flock`` locks belong to the open file, and the kernel drops them when their process dies however it dies,
    so a temporary whose lock can be taken was left by a killed writer. Without ``flock`` (Windows) or where the
    file system refuses it, nothing can be told apart: ``False``, and the temporary is left alone.
    """
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EWOULDBLOCK: a live writer; ENOLCK/EBADF/EOPNOTSUPP: no locks here
        return False
    return True


def _same_file(fd: int, path: str | Path) -> bool:
    """``path`` still names the file open as ``fd`` (not removed or replaced meanwhile)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def remove_if_stale(tmp: Path) -> bool:
    """Remove ``tmp``, a temporary file or folder of an atomic writer, if its writer is dead; ``True`` if removed.

    Every writer here holds an exclusive ``flock`` on its temporary from creating it to renaming it into place,
    so a temporary of a writer still running, in this or another process, is kept; so is any temporary this
    process may not open, and every one where the platform has no ``flock``.
    """
    tmp = Path(tmp)
    try:
        fd = os.open(tmp, os.O_RDONLY if tmp.is_dir() else os.O_RDWR)  # NFS's emulated flock needs write access
    except OSError:
        return False
    try:
        if not (_lock(fd) and _same_file(fd, tmp)):
            return False
        if tmp.is_dir():
            shutil.rmtree(tmp)
        else:
            tmp.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def stale_temporaries(path: Path, suffixes: Sequence[str] = (".tmp",)) -> list[Path]:
    """Temporaries of ``path`` beside it: ``.<name>.<8 random characters><suffix>`` for one of ``suffixes``,
    whether or not their writers still run (:func:`remove_if_stale` tells)."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + _RANDOM + "(" + "|".join(map(re.escape, suffixes)) + ")")
    try:
        with os.scandir(path.parent) as entries:
            return sorted(path.parent / e.name for e in entries if pattern.fullmatch(e.name))
    except OSError:  # no folder yet: nothing left behind
        return []


def remove_stale_temporaries(path: Path, suffixes: Sequence[str] = (".tmp",)) -> int:
    """Remove what killed writers of ``path`` left beside it (:func:`stale_temporaries`, :func:`remove_if_stale`):
    only temporaries of this one target, never those of a live writer. Returns how many were removed."""
    return sum(remove_if_stale(p) for p in stale_temporaries(path, suffixes))


@contextlib.contextmanager
def locked_temporary(path: Path, suffix: str = ".tmp", folder: bool = False,
                     stale_suffixes: Sequence[str] | None = None) -> Iterator[Path]:
    """A new temporary file (or empty ``folder``) ``.<name>.<random><suffix>`` beside ``path``, locked while the
    block runs, after removing the temporaries killed writers of ``path`` left (:func:`remove_stale_temporaries`,
    with ``stale_suffixes``, default ``(suffix,)``; ``()`` skips that: the folder is listed on every call, so a
    writer of thousands of files into one folder cleans it once instead, like the preprocessed store).

    The caller renames it into place or removes it; the lock only tells a later writer of ``path`` that this one
    is alive (an ``flock`` is released by the kernel when its process dies, so a killed writer's temporary is
    recognised as stale on the next write, and a concurrent writer's is left alone).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale_suffixes = (suffix,) if stale_suffixes is None else tuple(stale_suffixes)
    if stale_suffixes:
        remove_stale_temporaries(path, stale_suffixes)
    while True:
        if folder:
            tmp = tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
            fd = os.open(tmp, os.O_RDONLY)
        else:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        if not _lock(fd):  # no flock here: holding the file open would only stop the rename on Windows
            os.close(fd)
            fd = -1
            break
        if _same_file(fd, tmp):
            break
        os.close(fd)  # another writer's clean-up took it between its creation and the lock: make another one
    try:
        yield Path(tmp)
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock, after the rename (or the removal): the name is gone by then


@contextlib.contextmanager
def atomic_path(path: Path, keep_suffix: bool = False, remove_stale: bool = True) -> Iterator[Path]:
    """A temporary file beside ``path`` to write to; renamed to ``path`` when the block ends without an error.

    Serves writers that need a file name (SimpleITK, matplotlib, ``zipfile``) as well as :func:`atomic_write`. The
    temporary file is ``.<name>.<random>.tmp`` (hidden, and recognisable as an interrupted write), followed by
    ``path``'s suffixes with ``keep_suffix`` for writers that choose the format by the suffix. After the block
    the file is fsynced and renamed, so a process killed at any moment leaves either the old file or the complete
    new one, never a truncated file; on an error the temporary file is removed and ``path`` is untouched. A
    killed writer's temporary is removed by the next write of ``path`` (see :func:`locked_temporary`), unless
    ``remove_stale`` is ``False`` (a caller that cleans the whole folder itself).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    suffix = ".tmp" + ("".join(path.suffixes) if keep_suffix else "")
    stale = (".tmp", ".tmp" + "".join(path.suffixes)) if remove_stale else ()
    with locked_temporary(path, suffix, stale_suffixes=stale) as tmp:
        try:
            yield tmp
            with open(tmp, "rb+") as f:  # the writer may not have synced: order the data before the rename
                os.fsync(f.fileno())
            publish(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.filename is None and e.errno is not None:
                # a full disk fails in f.write, which names no file: name the one being written
                raise OSError(e.errno, e.strerror or str(e), str(path)) from e
            raise


def atomic_write(path: Path, write: Callable[[BinaryIO], None], remove_stale: bool = True) -> None:
    """Call ``write(f)`` on a binary file that replaces ``path`` atomically when done (see :func:`atomic_path`)."""
    with atomic_path(path, remove_stale=remove_stale) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: Path, text: str, remove_stale: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data), remove_stale)


def save_json(obj: Any, path: Path, remove_stale: bool = True) -> None:
    """Serialise a dataclass (or plain JSON data) to ``path`` atomically, human-readable (see
    :func:`atomic_path` for ``remove_stale``)."""
    atomic_write_text(Path(path), json.dumps(to_jsonable(obj), indent=2) + "\n", remove_stale)


def load_json(cls: type[T], path: Path) -> T:
    """Read a record of dataclass ``cls`` from ``path``.

    Raises
    ------
    AutosegError
        One line naming the file: unreadable, not JSON, another schema version, or a field of the wrong shape.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AutosegError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AutosegError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    expected = getattr(cls, "SCHEMA_VERSION", None)
    if expected is not None and isinstance(data, dict) and data.get("schema_version") != expected:
        raise AutosegError(
            f"{path}: schema_version {data.get('schema_version')!r}, this autoseg reads version {expected}; "
            f"re-run the step that wrote it"
        )
    try:
        return from_jsonable(cls, data)
    except (TypeError, ValueError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        raise AutosegError(f"{path}: malformed {cls.__name__} ({msg})") from None
