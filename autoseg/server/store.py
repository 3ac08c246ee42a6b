"""Images uploaded for later ``/infer`` calls (``PUT /datastore/``, ``PUT /session/``)."""

import shutil
from collections import OrderedDict
from pathlib import Path


class UploadStore:
    """Uploaded images kept for later ``/infer`` calls, by id, on disk, least recently used dropped first."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.files: OrderedDict[str, Path] = OrderedDict()

    def put(self, key: str, src: Path) -> None:
        dest = self.folder / src.name  # a unique spooled name with its image ending
        shutil.move(str(src), dest)
        old = self.files.pop(key, None)
        if old is not None:
            old.unlink(missing_ok=True)
        self.files[key] = dest
        while len(self.files) > self.limit:
            _, path = self.files.popitem(last=False)
            path.unlink(missing_ok=True)

    def get(self, key: str) -> Path | None:
        path = self.files.get(key)
        if path is not None:
            self.files.move_to_end(key)
        return path
