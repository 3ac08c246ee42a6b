"""The model archive format: a trained dataset's plans and checkpoints as one verifiable zip.

The zip mirrors the dataset's workspace folder (member names are :class:`autoseg.workspace.DatasetPaths` paths
relative to the dataset folder), so importing is unpacking it under ``WS/<dataset>/``::

    manifest.json                      ExportManifest: what is inside, with the sha256 of every other member
    plans.json, dataset_spec.json      (raw_dir blanked: the receiving machine need not have the raw data)
    best.json, postprocessing.json     when present and every configuration and fold best.json names is exported
    models/<config>/fold_<k>/checkpoint_final.pt       weights + plans hash + train config (no optimiser state)
    models/<config>/fold_<k>/{train_config.json, log.jsonl, progress.png, validation/summary.json}
    models/<config>/fold_<k>/network.onnx, inference.json    with ``export --format onnx``: the networks as ONNX
                                                             and what running them needs (InferenceSpec)

The exported checkpoint is always stored as ``checkpoint_final.pt`` (what ``autoseg predict`` loads); which file it
was taken from is recorded in the manifest (``checkpoint``) and in the checkpoint (``exported_from``). Validation
predictions and report overlays are not exported: they show (derived) patient images.

This module reads and writes the container and checks it completely on opening; it does not decode checkpoints
(that is :mod:`autoseg.nn.checkpoint`'s) and does not decide what to export (:mod:`autoseg.workflow.export`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable

from autoseg.errors import AutosegError
from autoseg.schema.base import atomic_path, atomic_write, from_jsonable, sha256_of, to_jsonable
from autoseg.schema.plans import Plans
from autoseg.workspace import DatasetPaths

MANIFEST = "manifest.json"
#: Which checkpoint of a fold can be exported.
CHECKPOINTS = ("final", "best")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Member names are paths inside the dataset folder: the layout of a dataset at the root of the zip.
_LAYOUT = DatasetPaths(Path(""))


def member_name(path: Path) -> str:
    """The member name of a file of ``DatasetPaths(Path(""))`` (``/``-separated)."""
    return Path(path).as_posix()


def checkpoint_member(configuration: str, fold: str) -> str:
    """Name of a fold's checkpoint inside the zip."""
    return member_name(_LAYOUT.fold(configuration, fold).final_checkpoint)


def onnx_member(configuration: str, fold: str) -> str:
    """Name of a fold's ONNX network inside the zip (``export --format onnx``)."""
    return member_name(_LAYOUT.fold(configuration, fold).onnx)


def fold_file_members(configuration: str, fold: str) -> list[str]:
    """Names of the optional files of an exported fold (:attr:`FoldPaths.exported_files`)."""
    return [member_name(p) for p in _LAYOUT.fold(configuration, fold).exported_files]


def allowed_members(manifest: "ExportManifest") -> dict[str, bool]:
    """Every member name a zip with this manifest may hold -> whether it is required."""
    allowed = {member_name(_LAYOUT.plans): True, member_name(_LAYOUT.dataset_spec): True,
               member_name(_LAYOUT.best): False, member_name(_LAYOUT.postprocessing): False,
               member_name(_LAYOUT.inference_spec): False}
    for config in manifest.configurations:
        for fold in manifest.folds.get(config, ()):
            allowed[checkpoint_member(config, fold)] = True
            allowed.update({name: False for name in fold_file_members(config, fold)})
            allowed[onnx_member(config, fold)] = False
    return allowed


@dataclass(frozen=True)
class ExportManifest:
    """``manifest.json`` of an exported model.

    Attributes
    ----------
    dataset
        Dataset name (the workspace folder it is imported into).
    autoseg_version
        Version of autoseg that wrote the zip.
    configurations
        Exported configurations, in plans order.
    folds
        Configuration -> its exported folds.
    checkpoint
        Which checkpoint of every fold was exported: ``"final"`` or ``"best"``.
    plans_sha256
        Hash of ``plans.json`` (every checkpoint was trained with these plans).
    files
        Member name -> sha256 of its bytes, for every member except the manifest.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    dataset: str
    autoseg_version: str
    configurations: tuple[str, ...]
    folds: dict[str, tuple[str, ...]]
    checkpoint: str
    plans_sha256: str
    files: dict[str, str]
    schema_version: int = field(default=SCHEMA_VERSION)


def write_archive(out_zip: Path, members: Iterable[tuple[str, bytes]],
                  manifest: Callable[[dict[str, str]], "ExportManifest"]) -> "ExportManifest":
    """Write ``members`` (name, bytes; one at a time, checkpoints can be large) and the manifest to ``out_zip``.

    ``manifest`` is called with member name -> sha256 once every member is written. The zip is written to a
    temporary file in the same folder, fsynced and renamed, so a killed export never leaves a partial zip.
    """
    files: dict[str, str] = {}
    with atomic_path(Path(out_zip)) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members:
                files[name] = hashlib.sha256(data).hexdigest()
                zf.writestr(name, data)
            result = manifest(files)
            zf.writestr(MANIFEST, json.dumps(to_jsonable(result), indent=2) + "\n")
    return result


class ModelArchive:
    """An exported model zip, checked and open for reading (use it as a context manager).

    Opening verifies the manifest, that the members are exactly the listed ones (and only names an export can
    hold), every member's sha256, and the plans' hash.

    Attributes
    ----------
    path
        The zip.
    manifest
        Its :class:`ExportManifest`.
    plans
        Its plans.

    Raises
    ------
    AutosegError
        Missing, corrupt, foreign or tampered zip (one line naming it).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise AutosegError(f"{self.path}: file not found")
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise AutosegError(f"{self.path}: not a readable zip archive ({e})") from None
        try:
            self.manifest = self._read_manifest()
            self._verify()
            self.plans = self._read_plans()
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> "ModelArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def _fail(self, what: str) -> AutosegError:
        return AutosegError(f"{self.path}: {what}")

    def _read_manifest(self) -> ExportManifest:
        try:
            data = json.loads(self._zip.read(MANIFEST))
        except KeyError:
            raise self._fail(f"no {MANIFEST}; not an autoseg model export") from None
        except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as e:
            raise self._fail(f"unreadable {MANIFEST} ({e})") from None
        expected = ExportManifest.SCHEMA_VERSION
        if not isinstance(data, dict) or data.get("schema_version") != expected:
            got = data.get("schema_version") if isinstance(data, dict) else None
            raise self._fail(f"{MANIFEST} schema_version {got!r}, this autoseg reads version {expected}")
        try:
            manifest = from_jsonable(ExportManifest, data)
        except (TypeError, ValueError, KeyError) as e:
            raise self._fail(f"malformed {MANIFEST} ({e.args[0] if e.args else e})") from None
        names = [manifest.dataset, *manifest.configurations,
                 *(f for folds in manifest.folds.values() for f in folds)]
        bad = [n for n in names if not _SAFE_NAME.match(n)]
        if bad:
            raise self._fail(f"{MANIFEST} names '{bad[0]}', not a valid dataset, configuration or fold name")
        if manifest.checkpoint not in CHECKPOINTS:
            raise self._fail(f"{MANIFEST}: unknown checkpoint kind '{manifest.checkpoint}'")
        return manifest

    def _verify(self) -> None:
        members = {i.filename for i in self._zip.infolist() if not i.is_dir()} - {MANIFEST}
        listed = set(self.manifest.files)
        allowed = allowed_members(self.manifest)
        for name in sorted(members - listed):
            raise self._fail(f"member {name} is not listed in {MANIFEST} (tampered?)")
        for name in sorted(listed - members):
            raise self._fail(f"member {name} listed in {MANIFEST} is missing")
        for name in sorted(listed - set(allowed)):
            raise self._fail(f"member {name} is not part of an autoseg model export")
        for name in sorted(n for n, required in allowed.items() if required and n not in listed):
            raise self._fail(f"required member {name} is missing")
        for name in sorted(listed):
            if self.sha256(name) != self.manifest.files[name]:
                raise self._fail(f"member {name} does not match its sha256 in {MANIFEST} (corrupt or tampered)")

    def sha256(self, member: str) -> str:
        """sha256 of a member's bytes (read in chunks)."""
        h = hashlib.sha256()
        try:
            with self._zip.open(member) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
            raise self._fail(f"member {member} cannot be read ({e}); the zip is corrupt") from None
        return h.hexdigest()

    def read(self, member: str) -> bytes:
        """A member's bytes."""
        try:
            return self._zip.read(member)
        except KeyError:
            raise self._fail(f"no member {member}") from None
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
            raise self._fail(f"member {member} cannot be read ({e}); the zip is corrupt") from None

    def extract_to(self, member: str, dest: Path) -> None:
        """Write a member to ``dest`` atomically (temporary file in the same folder, then a rename)."""
        def copy(out) -> None:
            with self._zip.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)

        atomic_write(dest, copy)

    def _read_plans(self) -> Plans:
        try:
            plans = from_jsonable(Plans, json.loads(self.read("plans.json")))
        except (TypeError, ValueError, KeyError) as e:
            raise self._fail(f"malformed plans.json ({e.args[0] if e.args else e})") from None
        if sha256_of(plans) != self.manifest.plans_sha256:
            raise self._fail(f"plans.json does not match plans_sha256 in {MANIFEST} (tampered?)")
        if plans.dataset_name != self.manifest.dataset:
            raise self._fail(f"plans.json is for dataset '{plans.dataset_name}', {MANIFEST} says "
                             f"'{self.manifest.dataset}'")
        missing = [c for c in self.manifest.configurations if c not in plans.configurations]
        if missing:
            raise self._fail(f"configuration '{missing[0]}' is not in its plans.json")
        return plans

    def checkpoint_bytes(self, configuration: str, fold: str) -> tuple[bytes, str]:
        """The (stripped) checkpoint of one exported fold, as bytes, and a name for it in errors (``zip:member``);
        decode it with :func:`autoseg.nn.checkpoint.load_checkpoint_bytes`."""
        folds = self.manifest.folds.get(configuration)
        if folds is None:
            raise self._fail(f"holds no configuration '{configuration}' (exported: "
                             f"{', '.join(self.manifest.configurations)})")
        if str(fold) not in folds:
            raise self._fail(f"holds no fold {fold} of {configuration} (exported folds: {', '.join(folds)})")
        member = checkpoint_member(configuration, str(fold))
        return self.read(member), f"{self.path}:{member}"
