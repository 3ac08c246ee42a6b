"""JSON objects that remember the keys given more than once (``json`` silently keeps the last), for the readers of
a dataset's description files, and the words their messages use for a JSON value's kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonObject(dict):
    """A JSON object that remembers keys given more than once (``json`` silently keeps the last)."""

    duplicates: tuple[str, ...] = ()


def object_hook(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject()
    dup = []
    for k, v in pairs:
        if k in obj:
            dup.append(k)
        obj[k] = v
    obj.duplicates = tuple(dup)
    return obj


def kind(value: Any) -> str:
    return {dict: "an object", JsonObject: "an object", list: "a list", str: "a string", bool: "true/false",
            type(None): "null"}.get(type(value), "a number")


def load_object(path: Path) -> Any:
    """``path`` parsed as JSON with :func:`object_hook` (raises OSError, UnicodeDecodeError, json.JSONDecodeError)."""
    return json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=object_hook)
