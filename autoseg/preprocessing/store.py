"""On-disk store of a configuration's preprocessed cases (``DatasetPaths.preprocessed(config)``).

Files per case (no pickle anywhere)::

    <case>.npy         data, float32 (C, Z, Y, X); np.load(mmap_mode="r") reads patches without loading the case
    <case>_seg.npy     segmentation, int8 (1, Z, Y, X); -1 = outside the nonzero region
    <case>_locs.npz    one int32 (n, 3) array of (Z, Y, X) voxel coordinates per foreground class, keys "1", "2", ...
                       (and "0": the annotated voxels, for a case with ignored ones)
    <case>.json        CaseProperties, written LAST: a case is complete iff its json exists and names the current
                       preprocessing hash
    store_info.json    StoreInfo: the preprocessing hash and configuration the folder holds

Every file is written to a hidden temporary file in the same folder (``.<name>.<random>.tmp``), flushed to disk and
renamed over its final name, so a killed run leaves whole files and temporaries only; :meth:`CaseStore.clean_partial`
removes the temporaries of writers no longer alive (a preprocessing run in another process keeps its own). Rewriting a case removes its json first, so old properties never vouch for new arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from autoseg.errors import AutosegError
from autoseg.preprocessing.case import CaseProperties, PreprocessedCase
from autoseg.schema.base import atomic_write, load_json, remove_if_stale, save_json

_SUFFIXES = (".npy", "_seg.npy", "_locs.npz", ".json")
INFO_NAME = "store_info.json"


@dataclass(frozen=True)
class StoreInfo:
    """What a case store folder holds (``store_info.json``).

    Attributes
    ----------
    plans_sha256
        :func:`~autoseg.preprocessing.case.preprocessing_sha256` of the data in the folder.
    config
        Configuration that wrote it.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    plans_sha256: str
    config: str
    schema_version: int = field(default=SCHEMA_VERSION)


class CaseStore:
    """Preprocessed cases of one configuration in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    # ---- paths
    def data_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.npy"

    def seg_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}_seg.npy"

    def locs_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}_locs.npz"

    def properties_path(self, case_id: str) -> Path:
        return self.folder / f"{case_id}.json"

    @property
    def info_path(self) -> Path:
        return self.folder / INFO_NAME

    def case_files(self, case_id: str) -> list[Path]:
        """The four files of a case, json last."""
        return [self.folder / f"{case_id}{s}" for s in _SUFFIXES]

    # ---- folder level
    def read_info(self) -> StoreInfo | None:
        """The folder's :class:`StoreInfo`, ``None`` when missing or unreadable."""
        if not self.info_path.is_file():
            return None
        try:
            return load_json(StoreInfo, self.info_path)
        except AutosegError:
            return None

    def write_info(self, plans_sha256: str, config: str) -> None:
        save_json(StoreInfo(plans_sha256, config), self.info_path)

    def case_ids(self) -> list[str]:
        """Cases with a properties json (complete for *some* preprocessing hash), sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name[:-5] for p in self.folder.glob("*.json")
                      if p.name != INFO_NAME and not p.name.startswith("."))

    def clean_partial(self) -> int:
        """Remove temporary files left by a killed run (not those a live writer holds,
        :func:`autoseg.schema.base.remove_if_stale`); returns how many."""
        if not self.folder.is_dir():
            return 0
        return sum(remove_if_stale(p) for p in self.folder.glob(".*.tmp"))

    def remove(self, case_id: str) -> None:
        """Delete a case (its json first, so a half-deleted case is never taken for complete)."""
        for p in reversed(self.case_files(case_id)):
            p.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete every case and the store info (the folder stays)."""
        self.info_path.unlink(missing_ok=True)
        for cid in self.case_ids():
            self.remove(cid)
        if self.folder.is_dir():
            for p in self.folder.iterdir():  # arrays of cases whose json was never written
                if p.is_file() and p.name.endswith((".npy", ".npz")):
                    p.unlink(missing_ok=True)
        self.clean_partial()

    # ---- cases
    def is_complete(self, case_id: str, plans_sha256: str) -> bool:
        """The case's json exists, reads, names ``plans_sha256``, and its arrays exist."""
        if not self.properties_path(case_id).is_file():
            return False
        try:
            props = load_json(CaseProperties, self.properties_path(case_id))
        except AutosegError:
            return False
        return (props.plans_sha256 == plans_sha256 and props.case_id == case_id
                and all(p.is_file() for p in self.case_files(case_id)))

    def write(self, case: PreprocessedCase) -> None:
        """Store a case: arrays first, properties json last (each atomically)."""
        cid = case.properties.case_id
        if case.seg is None:
            raise ValueError(f"case {cid}: the store holds training cases, which need a segmentation")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.properties_path(cid).unlink(missing_ok=True)
        data = np.ascontiguousarray(case.data, dtype=np.float32)
        seg = np.ascontiguousarray(case.seg, dtype=np.int8)
        # no per-file search for stale temporaries: it lists the folder (4 files a case), and a run cleans it
        # once at its start (clean_partial)
        atomic_write(self.data_path(cid), lambda f: np.save(f, data, allow_pickle=False), remove_stale=False)
        atomic_write(self.seg_path(cid), lambda f: np.save(f, seg, allow_pickle=False), remove_stale=False)
        locs = {str(k): np.asarray(v, dtype=np.int32).reshape(-1, 3) for k, v in case.locations.items()}
        atomic_write(self.locs_path(cid), lambda f: np.savez(f, **locs), remove_stale=False)
        save_json(case.properties, self.properties_path(cid), remove_stale=False)

    def load(self, case_id: str, mmap: bool = True
             ) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], CaseProperties]:
        """Read a case.

        Parameters
        ----------
        case_id
            The case.
        mmap
            Memory-map the arrays read-only (patch reads touch only the pages they need).

        Returns
        -------
        data, seg, locations, properties
            ``(C, Z, Y, X)`` float32, ``(1, Z, Y, X)`` int8, label value -> int32 ``(n, 3)``, properties.

        Raises
        ------
        AutosegError
            The case is missing or a file is unreadable (one line naming the file).
        """
        props = load_json(CaseProperties, self.properties_path(case_id))
        mode = "r" if mmap else None
        arrays = []
        for path in (self.data_path(case_id), self.seg_path(case_id)):
            try:
                arrays.append(np.load(path, mmap_mode=mode, allow_pickle=False))
            except (OSError, ValueError) as e:
                raise AutosegError(f"{path}: cannot be read ({e}); run `autoseg preprocess` again") from None
        try:
            with np.load(self.locs_path(case_id), allow_pickle=False) as z:
                locs = {int(k): z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise AutosegError(f"{self.locs_path(case_id)}: cannot be read ({e}); run `autoseg preprocess` "
                               f"again") from None
        return arrays[0], arrays[1], locs, props
