"""Model export and import: what of a trained dataset goes into a model archive (:mod:`autoseg.io.archive`), and
how an archive is unpacked into a workspace so that ``autoseg predict`` works there."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from autoseg import __version__
from autoseg.errors import AutosegError, option, require_extra
from autoseg.io.archive import (CHECKPOINTS, ExportManifest, ModelArchive, checkpoint_member, member_name, onnx_member,
                                write_archive)
from autoseg.nn.checkpoint import for_export, load_checkpoint
from autoseg.schema.base import atomic_write, from_jsonable, load_json, sha256_of, to_jsonable
from autoseg.schema.inference import ExportedNetwork, InferenceSpec, inference_spec
from autoseg.schema.plans import Plans
from autoseg.schema.selection import BestChoice
from autoseg.workflow.context import DatasetContext
from autoseg.workspace import DatasetPaths, Workspace


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


def _destination(paths: DatasetPaths, member: str) -> Path:
    """Where a (validated) member goes in the dataset's workspace folder."""
    return paths.root.joinpath(*member.split("/"))


def _member(paths: DatasetPaths, path: Path) -> str:
    """The member name of a file of the dataset's workspace folder."""
    return path.relative_to(paths.root).as_posix()


def _best_choice(paths: DatasetPaths) -> tuple[list[str], dict[str, list[str]]] | None:
    """``(chosen configurations, configuration -> folds)`` from ``best.json``, ``None`` without one."""
    if not paths.best.is_file():
        return None
    best = load_json(BestChoice, paths.best)
    return list(best.chosen), {str(c): [str(f) for f in fs] for c, fs in best.folds.items()}


def _trained_folds(paths: DatasetPaths, configuration: str, checkpoint: str) -> list[str]:
    return [f for f in paths.trained_folds(configuration)
            if paths.fold(configuration, f).checkpoint(checkpoint).is_file()]


def _select(ctx: DatasetContext, configurations: list[str] | None, checkpoint: str) -> dict[str, list[str]]:
    paths, plans = ctx.paths, ctx.plans
    best = None
    if configurations:
        names = list(dict.fromkeys(configurations))
    else:
        best = _best_choice(paths)
        names = best[0] if best else [c for c in plans.configurations if _trained_folds(paths, c, checkpoint)]
        if not names:
            raise AutosegError(f"{paths.root / 'models'}: no trained fold to export; run `autoseg train "
                               f"{ctx.name}` first")
    selected = {}
    for name in names:
        ctx.configuration(name)
        folds = _trained_folds(paths, name, checkpoint)
        wanted = best[1].get(name) if best is not None else None
        if wanted:
            missing = [f for f in wanted if f not in folds]
            if missing:
                raise AutosegError(f"{paths.fold(name, missing[0]).root}: fold {missing[0]} of {name} is named in "
                                   f"{paths.best.name} but has no checkpoint_{checkpoint}.pt")
            folds = [f for f in folds if f in wanted]
        if not folds:
            raise AutosegError(f"{paths.models(name)}: no trained fold of {name} with a "
                               f"checkpoint_{checkpoint}.pt")
        selected[name] = folds
    for name in list(selected):  # a cascade stage cannot predict without the stage before it
        previous = plans.configurations[name].previous_stage
        if previous is not None and previous not in selected:
            selected[previous] = _trained_folds(paths, previous, checkpoint)
            if not selected[previous]:
                raise AutosegError(f"{paths.models(previous)}: {name} needs {previous}, which has no "
                                   f"trained fold with a checkpoint_{checkpoint}.pt")
    return {c: selected[c] for c in plans.configurations if c in selected}


def _selection_is_covered(paths: DatasetPaths, selected: dict[str, list[str]]) -> bool:
    """``best.json`` names only exported configurations and folds (else it would not work after import)."""
    best = _best_choice(paths)
    if best is None:
        return False
    chosen, folds = best
    return all(c in selected and set(folds.get(c, selected[c])) <= set(selected[c]) for c in chosen)


FORMATS = ("checkpoint", "onnx")


def fold_onnx(ctx: DatasetContext, configuration: str, fold: str, checkpoint: str = "final") -> Path:
    """The fold's ``network.onnx``, made from its checkpoint when missing or made from other weights (a fold
    trained again after an export), written atomically. Needs the ``[onnx]`` extra."""
    from autoseg.nn.onnx import META_WEIGHTS, export_onnx, onnx_metadata, weights_sha256
    from autoseg.nn.unet import build_network

    folder = ctx.paths.fold(configuration, fold)
    source = folder.checkpoint(checkpoint)
    ckpt = load_checkpoint(source, plans_sha256=ctx.plans_sha256)
    weights = weights_sha256(ckpt["model"])
    if folder.onnx.is_file():
        try:
            if onnx_metadata(folder.onnx.read_bytes(), str(folder.onnx)).get(META_WEIGHTS) == weights:
                return folder.onnx
        except AutosegError:
            pass  # a broken or foreign file where the workspace keeps its own: made again below
    plans, plan = ctx.plans, ctx.plans.configurations[configuration]
    network = build_network(plan.architecture, plans.input_channels(configuration), plans.num_outputs,
                            deep_supervision=False)
    network.load_state_dict(ckpt["model"])
    data = export_onnx(network, plan.patch_size, plans.input_channels(configuration), ctx.plans_sha256, weights)
    atomic_write(folder.onnx, lambda f: f.write(data))
    return folder.onnx


def _export_members(ctx: DatasetContext, selected: dict[str, list[str]], checkpoint: str, fmt: str = "checkpoint"
                    ) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of everything exported, one at a time (checkpoints can be large)."""
    paths = ctx.paths
    networks: dict[str, list[ExportedNetwork]] = {}
    yield _member(paths, paths.plans), paths.plans.read_bytes()
    spec = (json.dumps(to_jsonable(replace(ctx.spec, raw_dir="")), indent=2) + "\n").encode()
    yield _member(paths, paths.dataset_spec), spec
    if _selection_is_covered(paths, selected):
        for extra in (paths.best, paths.postprocessing):
            if extra.is_file():
                yield _member(paths, extra), extra.read_bytes()
    for config, folds in selected.items():
        for fold in folds:
            folder = paths.fold(config, fold)
            source = folder.checkpoint(checkpoint)
            ckpt = load_checkpoint(source, plans_sha256=ctx.plans_sha256)
            yield checkpoint_member(config, fold), for_export(ckpt, source.name)
            for path in folder.exported_files:
                if path.is_file():
                    yield _member(paths, path), path.read_bytes()
            if fmt == "onnx":
                data = fold_onnx(ctx, config, fold, checkpoint).read_bytes()
                member = _member(paths, folder.onnx)
                networks.setdefault(config, []).append(
                    ExportedNetwork(fold, Path(member).as_posix(), hashlib.sha256(data).hexdigest()))
                yield member, data
    if fmt == "onnx":
        spec = inference_spec(ctx.plans, ctx.plans_sha256, {c: tuple(n) for c, n in networks.items()})
        yield _member(paths, paths.inference_spec), (json.dumps(to_jsonable(spec), indent=2) + "\n").encode()


def export_model(ctx: DatasetContext, out_zip: Path, configurations: list[str] | None = None,
                 checkpoint: str = "final", overwrite: bool = False, fmt: str = "checkpoint") -> ExportManifest:
    """Write a dataset's trained model(s) to one zip that :func:`import_model` can unpack elsewhere.

    Parameters
    ----------
    ctx
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
    fmt
        ``"checkpoint"``, or ``"onnx"``: also every fold's network as ONNX (``models/<config>/fold_<k>/
        network.onnx``, kept in the workspace too) and ``inference.json``
        (:class:`~autoseg.schema.inference.InferenceSpec`), for runtimes without autoseg. Needs ``[onnx]``.

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
    if fmt not in FORMATS:
        raise AutosegError(f"format '{fmt}': must be one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_extra("onnx", "onnx", "ONNX export")
    out_zip = Path(out_zip)
    if out_zip.exists() and not overwrite:
        raise AutosegError(f"{out_zip}: already exists; pass {option('overwrite=True')} to replace it")
    if out_zip.is_dir():
        raise AutosegError(f"{out_zip}: is a folder; give the zip file to write")
    selected = _select(ctx, configurations, checkpoint)
    return write_archive(out_zip, _export_members(ctx, selected, checkpoint, fmt),
                         lambda files: ExportManifest(dataset=ctx.name, autoseg_version=__version__,
                                                      configurations=tuple(selected),
                                                      folds={c: tuple(f) for c, f in selected.items()},
                                                      checkpoint=checkpoint, plans_sha256=ctx.plans_sha256,
                                                      files=files))


def _spec_without_raw_dir(data: bytes) -> str | None:
    try:
        return sha256_of({**json.loads(data), "raw_dir": ""})
    except (ValueError, TypeError):
        return None


def _check_checkpoints(archive: ModelArchive) -> None:
    """Load every checkpoint of the zip the safe way (weights only: a pickle that would run code is refused) and
    check its tensors against the network its plans describe, before anything is written."""
    from autoseg.nn.checkpoint import check_weights, load_checkpoint_bytes
    from autoseg.nn.unet import build_network

    plans = archive.plans
    for config, folds in archive.manifest.folds.items():
        plan = plans.configurations[config]
        network = build_network(plan.architecture, plans.input_channels(config), plans.num_outputs)
        for fold in folds:
            ckpt = load_checkpoint_bytes(*archive.checkpoint_bytes(config, fold), archive.manifest.plans_sha256)
            check_weights(ckpt.get("model"), network, f"{archive.path}:{checkpoint_member(config, fold)}")
            _check_onnx(archive, config, fold, ckpt["model"])
    member = member_name(DatasetPaths(Path("")).inference_spec)
    if member in archive.manifest.files:
        try:
            from_jsonable(InferenceSpec, json.loads(archive.read(member)))
        except (TypeError, ValueError, KeyError) as e:
            raise AutosegError(f"{archive.path}:{member}: malformed ({e.args[0] if e.args else e})") from None


def _check_onnx(archive: ModelArchive, config: str, fold: str, state: dict) -> None:
    """An ONNX member must pass the runtime's safety checks and be made from the fold's checkpoint. Without the
    ``[onnx]`` extra it is checked when it is first loaded instead."""
    member = onnx_member(config, fold)
    if member not in archive.manifest.files or importlib.util.find_spec("onnx") is None:
        return
    from autoseg.nn.onnx import META_PLANS, META_WEIGHTS, onnx_metadata, weights_mismatch, weights_sha256

    data = archive.read(member)
    meta = onnx_metadata(data, f"{archive.path}:{member}")
    why = (weights_mismatch(data, state) if meta.get(META_PLANS) == archive.manifest.plans_sha256
           and meta.get(META_WEIGHTS) == weights_sha256(state) else "its metadata names other plans or weights")
    if why:
        raise AutosegError(f"{archive.path}:{member}: not made from the zip's checkpoint of {config} fold {fold} "
                           f"({why}; tampered?)")


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
        _check_checkpoints(archive)
        paths = Workspace(Path(workspace)).dataset(manifest.dataset)
        members = sorted(manifest.files, key=lambda n: (n == "plans.json", n))  # the plans last
        conflicts, unchanged = [], []
        for name in members:
            dest = _destination(paths, name)
            if not dest.exists():
                continue
            if dest.is_dir():
                same = False
            elif dest == paths.plans:  # same plans, whatever the JSON formatting
                try:
                    same = sha256_of(load_json(Plans, dest)) == manifest.plans_sha256
                except AutosegError:
                    same = False
            elif dest == paths.dataset_spec:  # the local one may know where the raw data are: keep it
                same = _spec_without_raw_dir(dest.read_bytes()) == _spec_without_raw_dir(archive.read(name))
            else:
                same = hashlib.sha256(dest.read_bytes()).hexdigest() == manifest.files[name]
            if same:
                unchanged.append(name)
            else:
                conflicts.append(dest)
        if conflicts and not overwrite:
            raise AutosegError(f"{conflicts[0]}: already exists and differs from {zip_path} ({len(conflicts)} "
                               f"file(s) in conflict); pass {option('overwrite=True')} to replace them")
        if conflicts:
            if paths.plans.is_file() and paths.plans in conflicts:
                try:
                    old_sha = sha256_of(load_json(Plans, paths.plans))
                    os.replace(paths.plans, paths.superseded_plans(old_sha))
                except AutosegError:
                    pass  # unreadable plans: simply replaced below
            for config, folds in manifest.folds.items():
                for fold in folds:
                    folder = paths.fold(config, fold).root
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
