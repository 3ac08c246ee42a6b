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
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

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


@contextlib.contextmanager
def atomic_path(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary file beside ``path`` to write to; renamed to ``path`` when the block ends without an error.

    Serves writers that need a file name (SimpleITK, matplotlib, ``zipfile``) as well as :func:`atomic_write`. The
    temporary file is ``.<name>.<random>.tmp`` (hidden, and recognisable as an interrupted write), followed by
    ``path``'s suffixes with ``keep_suffix`` for writers that choose the format by the suffix. After the block
    the file is fsynced and renamed, so a process killed at any moment leaves either the old file or the complete
    new one, never a truncated file; on an error the temporary file is removed and ``path`` is untouched.

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
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + ("".join(path.suffixes) if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
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


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a binary file that replaces ``path`` atomically when done (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))


def save_json(obj: Any, path: Path) -> None:
    """Serialise a dataclass (or plain JSON data) to ``path`` atomically, human-readable."""
    atomic_write_text(Path(path), json.dumps(to_jsonable(obj), indent=2) + "\n")


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
