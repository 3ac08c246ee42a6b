"""Model export and import: a trained dataset's plans and checkpoints as one verifiable zip.

The zip mirrors the dataset's workspace folder, so importing is unpacking it under ``WS/<dataset>/``::

    manifest.json                      ExportManifest: what is inside, with the sha256 of every other member
    plans.json, dataset_spec.json      (raw_dir blanked: the receiving machine need not have the raw data)
    best.json, postprocessing.json     when present and every configuration and fold best.json names is exported
    models/<config>/fold_<k>/checkpoint_final.pt       weights + plans hash + train config (no optimiser state)
    models/<config>/fold_<k>/{train_config.json, log.jsonl, progress.png, validation/summary.json}

The exported checkpoint is always stored as ``checkpoint_final.pt`` (what ``autoseg predict`` loads); which file it
was taken from is recorded in the manifest (``checkpoint``) and in the checkpoint (``exported_from``). Validation
predictions and report overlays are not exported: they show (derived) patient images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Iterator

from autoseg import __version__
from autoseg.errors import AutosegError
from autoseg.schema.base import atomic_write, from_jsonable, load_json, publish, sha256_of, to_jsonable
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.plans import Plans
from autoseg.workspace import DatasetPaths, Workspace

MANIFEST = "manifest.json"
CHECKPOINTS = ("final", "best")
#: Files of a fold folder exported besides the checkpoint, when present.
FOLD_FILES = ("train_config.json", "log.jsonl", "progress.png", "validation/summary.json")
#: Checkpoint entries needed for prediction and fine-tuning (optimiser, grad scaler and RNG state are dropped).
KEPT_CHECKPOINT_KEYS = ("format", "version", "model", "plans_sha256", "train_config", "state")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_model` did.

    Attributes
    ----------
    manifest
        The imported zip's manifest.
    root
        The dataset's workspace folder.
    written, unchanged
        Members written, and members already present with identical content (left alone).
    """

    manifest: ExportManifest
    root: Path
    written: tuple[str, ...]
    unchanged: tuple[str, ...]


def checkpoint_member(configuration: str, fold: str) -> str:
    """Name of a fold's checkpoint inside the zip."""
    return f"models/{configuration}/fold_{fold}/checkpoint_final.pt"


def _allowed_members(manifest: ExportManifest) -> dict[str, bool]:
    """Every member name a zip with this manifest may hold -> whether it is required."""
    allowed = {"plans.json": True, "dataset_spec.json": True, "best.json": False, "postprocessing.json": False}
    for config in manifest.configurations:
        for fold in manifest.folds.get(config, ()):
            allowed[checkpoint_member(config, fold)] = True
            for name in FOLD_FILES:
                allowed[f"models/{config}/fold_{fold}/{name}"] = False
    return allowed


def _destination(paths: DatasetPaths, member: str) -> Path:
    """Where a (validated) member goes in the dataset's workspace folder."""
    return paths.root.joinpath(*member.split("/"))


# ----------------------------------------------------------------------------------------------------- export


def _best_choice(paths: DatasetPaths) -> tuple[list[str], dict[str, list[str]]] | None:
    """``(chosen configurations, configuration -> folds)`` from ``best.json``, ``None`` without one."""
    if not paths.best.is_file():
        return None
    try:
        from autoseg.schema.selection import BestChoice
    except ImportError:  # no model selection in this version: read the plain JSON
        try:
            best = json.loads(paths.best.read_text())
        except (OSError, ValueError) as e:
            raise AutosegError(f"{paths.best}: cannot be read ({e})") from None
    else:
        best = to_jsonable(load_json(BestChoice, paths.best))
    chosen = best.get("chosen") if isinstance(best, dict) else None
    if isinstance(chosen, str):
        chosen = [chosen]
    if not chosen or not all(isinstance(c, str) for c in chosen):
        raise AutosegError(f"{paths.best}: no 'chosen' configurations in it")
    folds = best.get("folds") if isinstance(best.get("folds"), dict) else {}
    return list(chosen), {str(c): [str(f) for f in fs] for c, fs in folds.items()}


def _trained_folds(paths: DatasetPaths, configuration: str, checkpoint: str) -> list[str]:
    return [f for f in paths.trained_folds(configuration)
            if (paths.model(configuration, f) / f"checkpoint_{checkpoint}.pt").is_file()]


def _select(paths: DatasetPaths, plans: Plans, configurations: list[str] | None, checkpoint: str
            ) -> dict[str, list[str]]:
    best = None
    if configurations:
        names = list(dict.fromkeys(configurations))
    else:
        best = _best_choice(paths)
        names = best[0] if best else [c for c in plans.configurations if _trained_folds(paths, c, checkpoint)]
        if not names:
            raise AutosegError(f"{paths.root / 'models'}: no trained fold to export; run `autoseg train "
                               f"{paths.root.name}` first")
    selected = {}
    for name in names:
        if name not in plans.configurations:
            raise AutosegError(f"{paths.plans}: no configuration '{name}' (planned: "
                               f"{', '.join(plans.configurations)})")
        folds = _trained_folds(paths, name, checkpoint)
        wanted = best[1].get(name) if best is not None else None
        if wanted:
            missing = [f for f in wanted if f not in folds]
            if missing:
                raise AutosegError(f"{paths.model(name, missing[0])}: fold {missing[0]} of {name} is named in "
                                   f"{paths.best.name} but has no checkpoint_{checkpoint}.pt")
            folds = [f for f in folds if f in wanted]
        if not folds:
            raise AutosegError(f"{paths.model(name, 0).parent}: no trained fold of {name} with a "
                               f"checkpoint_{checkpoint}.pt")
        selected[name] = folds
    for name in list(selected):  # a cascade stage cannot predict without the stage before it
        previous = plans.configurations[name].previous_stage
        if previous is not None and previous not in selected:
            selected[previous] = _trained_folds(paths, previous, checkpoint)
            if not selected[previous]:
                raise AutosegError(f"{paths.model(previous, 0).parent}: {name} needs {previous}, which has no "
                                   f"trained fold with a checkpoint_{checkpoint}.pt")
    return {c: selected[c] for c in plans.configurations if c in selected}


def _stripped_checkpoint(path: Path, plans_sha: str, checkpoint: str) -> bytes:
    import torch

    from autoseg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, plans_sha256=plans_sha)
    kept = {k: ckpt[k] for k in KEPT_CHECKPOINT_KEYS if k in ckpt}
    kept["exported_from"] = f"checkpoint_{checkpoint}.pt"
    buf = io.BytesIO()
    torch.save(kept, buf)
    return buf.getvalue()


def _selection_is_covered(paths: DatasetPaths, selected: dict[str, list[str]]) -> bool:
    """``best.json`` names only exported configurations and folds (else it would not work after import)."""
    best = _best_choice(paths)
    if best is None:
        return False
    chosen, folds = best
    return all(c in selected and set(folds.get(c, selected[c])) <= set(selected[c]) for c in chosen)


def _export_members(paths: DatasetPaths, plans: Plans, spec: DatasetSpec, selected: dict[str, list[str]],
                    checkpoint: str) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of everything exported, one at a time (checkpoints can be large)."""
    yield "plans.json", paths.plans.read_bytes()
    yield "dataset_spec.json", (json.dumps(to_jsonable(replace(spec, raw_dir="")), indent=2) + "\n").encode()
    if _selection_is_covered(paths, selected):
        for extra in (paths.best, paths.postprocessing):
            if extra.is_file():
                yield extra.name, extra.read_bytes()
    sha = sha256_of(plans)
    for config, folds in selected.items():
        for fold in folds:
            folder = paths.model(config, fold)
            yield checkpoint_member(config, fold), _stripped_checkpoint(folder / f"checkpoint_{checkpoint}.pt", sha,
                                                                        checkpoint)
            for name in FOLD_FILES:
                if (folder / name).is_file():
                    yield f"models/{config}/fold_{fold}/{name}", (folder / name).read_bytes()


def export_model(workspace: Path, dataset: str, out_zip: Path, configurations: list[str] | None = None,
                 checkpoint: str = "final", overwrite: bool = False) -> ExportManifest:
    """Write a dataset's trained model(s) to one zip that :func:`import_model` can unpack elsewhere.

    Parameters
    ----------
    workspace, dataset
        The trained dataset.
    out_zip
        Zip to write (atomically: a temporary file in the same folder, then a rename).
    configurations
        Configurations to export (default: ``best.json``'s chosen ones, else every configuration with a trained
        fold). Every fold with a final checkpoint is exported (only ``best.json``'s folds when it names them).
    checkpoint
        ``"final"`` or ``"best"`` (the checkpoint with the best smoothed pseudo-Dice).
    overwrite
        Replace an existing ``out_zip``.

    Returns
    -------
    ExportManifest
        What the zip holds.

    Raises
    ------
    AutosegError
        No plans or no trained fold, unknown configuration, or ``out_zip`` exists without ``overwrite``.
    """
    if checkpoint not in CHECKPOINTS:
        raise AutosegError(f"checkpoint '{checkpoint}': must be one of {', '.join(CHECKPOINTS)}")
    out_zip = Path(out_zip)
    paths = Workspace(Path(workspace)).dataset(dataset)
    if not paths.plans.is_file():
        raise AutosegError(f"{paths.plans}: no plans for dataset '{dataset}'; run `autoseg plan RAW_DIR` first")
    if out_zip.exists() and not overwrite:
        raise AutosegError(f"{out_zip}: already exists; pass --overwrite to replace it")
    if out_zip.is_dir():
        raise AutosegError(f"{out_zip}: is a folder; give the zip file to write")
    plans = load_json(Plans, paths.plans)
    spec = load_json(DatasetSpec, paths.dataset_spec)
    selected = _select(paths, plans, configurations, checkpoint)

    out_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_zip.parent, prefix=f".{out_zip.name}.", suffix=".tmp")
    os.close(fd)
    files: dict[str, str] = {}
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in _export_members(paths, plans, spec, selected, checkpoint):
                files[name] = hashlib.sha256(data).hexdigest()
                zf.writestr(name, data)
            manifest = ExportManifest(dataset=plans.dataset_name, autoseg_version=__version__,
                                      configurations=tuple(selected),
                                      folds={c: tuple(f) for c, f in selected.items()}, checkpoint=checkpoint,
                                      plans_sha256=sha256_of(plans), files=files)
            zf.writestr(MANIFEST, json.dumps(to_jsonable(manifest), indent=2) + "\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        publish(tmp, out_zip)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return manifest


# ----------------------------------------------------------------------------------------------------- import


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
        allowed = _allowed_members(self.manifest)
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

    def checkpoint(self, configuration: str, fold: str) -> dict:
        """The (stripped) checkpoint of one exported fold, loaded on the CPU with ``weights_only``."""
        import torch

        folds = self.manifest.folds.get(configuration)
        if folds is None:
            raise self._fail(f"holds no configuration '{configuration}' (exported: "
                             f"{', '.join(self.manifest.configurations)})")
        if str(fold) not in folds:
            raise self._fail(f"holds no fold {fold} of {configuration} (exported folds: {', '.join(folds)})")
        try:
            return torch.load(io.BytesIO(self.read(checkpoint_member(configuration, str(fold)))),
                              map_location="cpu", weights_only=True)
        except AutosegError:
            raise
        except Exception as e:  # torch raises many types for foreign data
            raise self._fail(f"checkpoint of {configuration} fold {fold} is not readable "
                             f"({type(e).__name__})") from None


def _spec_without_raw_dir(data: bytes) -> str | None:
    try:
        return sha256_of({**json.loads(data), "raw_dir": ""})
    except (ValueError, TypeError):
        return None


def import_model(zip_path: Path, workspace: Path, overwrite: bool = False) -> ImportResult:
    """Unpack an exported model into ``workspace/<dataset>/`` so that ``autoseg predict`` works there.

    Nothing is needed besides the zip: no raw or preprocessed data. Into a dataset folder that already exists,
    files with identical content are left alone (so identical plans merge, e.g. other folds of the same model); a
    file that differs (other plans, another trained fold) is refused unless ``overwrite``. An existing
    ``dataset_spec.json`` that differs only in ``raw_dir`` is kept.

    With ``overwrite``, replaced plans are kept as ``plans.<hash>.json`` (models trained on them still name
    them), and every fold folder the zip brings is replaced as a whole.

    Raises
    ------
    AutosegError
        Corrupt, foreign or tampered zip (checked completely before anything is written), or conflicting files
        without ``overwrite``.
    """
    zip_path = Path(zip_path)
    with ModelArchive(zip_path) as archive:
        manifest = archive.manifest
        paths = Workspace(Path(workspace)).dataset(manifest.dataset)
        members = sorted(manifest.files, key=lambda n: (n == "plans.json", n))  # the plans last
        conflicts, unchanged = [], []
        for name in members:
            dest = _destination(paths, name)
            if not dest.exists():
                continue
            if dest.is_dir():
                same = False
            elif name == "plans.json":  # same plans, whatever the JSON formatting
                try:
                    same = sha256_of(load_json(Plans, dest)) == manifest.plans_sha256
                except AutosegError:
                    same = False
            elif name == "dataset_spec.json":  # the local one may know where the raw data are: keep it
                same = _spec_without_raw_dir(dest.read_bytes()) == _spec_without_raw_dir(archive.read(name))
            else:
                same = hashlib.sha256(dest.read_bytes()).hexdigest() == manifest.files[name]
            if same:
                unchanged.append(name)
            else:
                conflicts.append(dest)
        if conflicts and not overwrite:
            raise AutosegError(f"{conflicts[0]}: already exists and differs from {zip_path} ({len(conflicts)} "
                               f"file(s) in conflict); pass --overwrite to replace them")
        if conflicts:
            if paths.plans.is_file() and paths.plans in conflicts:
                try:
                    old_sha = sha256_of(load_json(Plans, paths.plans))
                    os.replace(paths.plans, paths.superseded_plans(old_sha))
                except AutosegError:
                    pass  # unreadable plans: simply replaced below
            for config, folds in manifest.folds.items():
                for fold in folds:
                    folder = paths.model(config, fold)
                    if any(c == folder or folder in c.parents for c in conflicts):
                        shutil.rmtree(folder)
                        unchanged = [n for n in unchanged if not _destination(paths, n).is_relative_to(folder)]
        written = []
        for name in members:
            if name in unchanged:
                continue
            archive.extract_to(name, _destination(paths, name))
            written.append(name)
    return ImportResult(manifest, paths.root, tuple(written), tuple(unchanged))
