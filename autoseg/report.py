"""A trained fold's report: ``models/<config>/fold_<k>/report.md`` with its figures.

The report summarises the run (from ``train_config.json``, ``log.jsonl`` and the final checkpoint's state), embeds
``progress.png``, tabulates the validation metrics per class (``validation/summary.json``), draws the per-case Dice
per class as a box plot (``dice_boxplot.png``) and, when the raw data are at hand, overlays reference and
prediction contours on one slice of the two worst and two best validation cases (``overlays/<case>.png``).
Figures use matplotlib's object API with the Agg canvas (no pyplot state); every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.progress import hms
from autoseg.schema.base import atomic_path, atomic_write_text, from_jsonable, load_json
from autoseg.schema.dataset import DatasetSpec
from autoseg.schema.evaluation import EvaluationSummary
from autoseg.schema.training import EpochLog, TrainConfig
from autoseg.workspace import FoldPaths

#: Cases shown at each end of the per-case ranking.
N_EXTREME = 2
_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf")


@dataclass(frozen=True)
class _Run:
    config: TrainConfig | None
    log: list[EpochLog]
    state: dict | None


def write_fold_report(folder: FoldPaths, spec: DatasetSpec | None = None) -> Path:
    """Write the report of one trained fold; returns the path of ``report.md``.

    ``spec`` locates the raw images for the overlays (without it, or without the raw data, they are skipped).

    Raises
    ------
    AutosegError
        The fold folder does not exist (never trained).
    """
    if not folder.root.is_dir():
        raise AutosegError(f"{folder.root}: no such fold folder (never trained)")
    run = _read_run(folder)
    title = (f"{run.config.dataset} {run.config.configuration} fold {run.config.fold}" if run.config
             else folder.root.name)
    lines = [f"# {title}", "", "## Run", "", *_run_table(run), ""]
    if folder.progress_plot.is_file():
        lines += ["## Training progress", "", f"![training progress]({folder.relative(folder.progress_plot)})", ""]
    lines += ["## Validation", ""]
    if not folder.validation_summary.is_file():
        lines += ["No validation summary (fold `all`, or training ran with `--no-validation`).", ""]
    else:
        summary = load_json(EvaluationSummary, folder.validation_summary)
        lines += [*_metrics_table(summary), ""]
        if _dice_boxplot(summary, folder.dice_boxplot):
            lines += [f"![Dice per validation case and class]({folder.relative(folder.dice_boxplot)})", ""]
        lines += ["## Worst and best validation cases", "", *_overlays(summary, folder, spec), ""]
    atomic_write_text(folder.report, "\n".join(lines).rstrip() + "\n")
    return folder.report


# ----------------------------------------------------------------------------------------------------- reading


def _read_run(folder: FoldPaths) -> _Run:
    config = None
    if folder.train_config.is_file():
        config = load_json(TrainConfig, folder.train_config)
    log = []
    if folder.log.is_file():
        for line in folder.log.read_text().splitlines():
            try:
                log.append(from_jsonable(EpochLog, json.loads(line)))
            except (ValueError, TypeError, KeyError):
                continue  # a line cut by a kill
    return _Run(config, log, _checkpoint_state(folder))


def _checkpoint_state(folder: FoldPaths) -> dict | None:
    """The run state saved in the final (else latest) checkpoint; ``None`` without a readable one."""
    for kind in ("final", "latest"):
        path = folder.checkpoint(kind)
        if path.is_file():
            from autoseg.nn.checkpoint import load_checkpoint

            try:
                return json.loads(load_checkpoint(path)["state"])
            except (AutosegError, KeyError, ValueError, TypeError):
                return None
    return None


# ----------------------------------------------------------------------------------------------------- tables


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _run_table(run: _Run) -> list[str]:
    cfg, log, st = run.config, run.log, run.state or {}
    rows: list[tuple[str, str]] = []
    epochs_done = st.get("epoch", len(log))
    total = st.get("total_epochs", cfg.epochs if cfg else None)
    rows.append(("epochs", f"{epochs_done}" + (f" of {total}" if total is not None else "")))
    per_epoch = st.get("iterations_per_epoch", cfg.iterations_per_epoch if cfg else None)
    if per_epoch is not None:
        rows.append(("iterations", f"{epochs_done * per_epoch} ({per_epoch} per epoch)"))
    seconds = st.get("train_seconds") or sum(e.epoch_seconds for e in log)
    rows.append(("training time", f"{hms(seconds)}" + (f" ({seconds / max(1, epochs_done):.1f} s per epoch)"
                                                        if epochs_done else "")))
    if cfg is not None:
        rows += [("precision", cfg.precision), ("batch size", str(cfg.batch_size or "plans")),
                 ("initial learning rate", f"{cfg.learning_rate:g}"), ("seed", str(cfg.seed))]
        if cfg.budget_minutes is not None:
            rows.append(("time budget", f"{cfg.budget_minutes:g} min"))
        if cfg.pretrained:
            rows.append(("initialised from", f"`{cfg.pretrained}` fold {cfg.pretrained_fold}"))
    if log:
        last = log[-1]
        rows.append(("final pseudo-Dice", " / ".join(_fmt(d) for d in last.pseudo_dice)
                     + f" (smoothed {_fmt(last.ema_pseudo_dice)})"))
        best = max(log, key=lambda e: e.ema_pseudo_dice)
        rows.append(("best smoothed pseudo-Dice", f"{_fmt(best.ema_pseudo_dice)} (epoch {best.epoch + 1})"))
        rows.append(("final loss", f"train {last.train_loss:.4f}, validation {last.val_loss:.4f}"))
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _metrics_table(summary: EvaluationSummary) -> list[str]:
    tol = f"{summary.nsd_tolerance_mm:g}"
    lines = [f"{len(summary.cases)} validation case(s); mean foreground Dice "
             f"**{_fmt(summary.foreground_mean_dice)}**.", "",
             f"| class | Dice | IoU | HD95 (mm) | NSD ({tol} mm) | cases |", "|---|---|---|---|---|---|"]
    for key, m in summary.mean.items():
        name = summary.label_names.get(key, key)
        lines.append(f"| {name} ({key}) | {_fmt(m.dice)} | {_fmt(m.iou)} | {_fmt(m.hd95, 2)} | {_fmt(m.nsd)} "
                     f"| {m.n_cases} |")
    return lines


# ----------------------------------------------------------------------------------------------------- figures


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp)


def _dice_boxplot(summary: EvaluationSummary, path: Path) -> bool:
    """Per-case Dice per class; ``False`` (nothing drawn) without cases."""
    keys = [str(v) for v in summary.labels]
    data = [[c.classes[k].dice for c in summary.cases if k in c.classes and c.classes[k].dice is not None]
            for k in keys]
    if not any(data):
        return False
    fig = _figure(max(4.0, 1.2 * len(keys) + 2), 4)
    ax = fig.subplots()
    positions = [i + 1 for i, d in enumerate(data) if d]
    ax.boxplot([d for d in data if d], positions=positions, widths=0.5)
    rng = np.random.default_rng(0)
    for pos, d in zip(positions, (d for d in data if d)):
        ax.scatter(pos + rng.uniform(-0.12, 0.12, len(d)), d, s=12, alpha=0.6, color="k", zorder=3)
    ax.set_xticks(range(1, len(keys) + 1))
    ax.set_xticklabels([summary.label_names.get(k, k) for k in keys])
    ax.set_xlim(0.5, len(keys) + 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title(f"validation Dice per case ({len(summary.cases)} cases)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def _case_scores(summary: EvaluationSummary) -> list[tuple[str, float]]:
    """``(case, mean foreground Dice)`` sorted worst first, over the cases where some class is defined."""
    scores = []
    for case in summary.cases:
        values = [m.dice for k, m in case.classes.items() if k != "0" and m.dice is not None]
        if values:
            scores.append((case.case_id, float(np.mean(values))))
    return sorted(scores, key=lambda s: (s[1], s[0]))


def _overlays(summary: EvaluationSummary, folder: FoldPaths, spec: DatasetSpec | None) -> list[str]:
    scores = _case_scores(summary)
    if not scores:
        return ["No case with a defined Dice."]
    n_worst = min(N_EXTREME, (len(scores) + 1) // 2)
    worst = scores[:n_worst]
    best = scores[n_worst:][::-1][:N_EXTREME]
    picked = [("worst", s) for s in worst] + [("best", s) for s in best]
    raw = Path(spec.raw_dir) if spec is not None and spec.raw_dir else None
    if raw is None or not (raw / "dataset.json").is_file():
        where = "not recorded, e.g. an imported model" if raw is None else str(raw)
        listing = ", ".join(f"{kind} {cid} ({d:.3f})" for kind, (cid, d) in picked)
        return [f"Overlays skipped: the raw data are not available (raw folder: {where}). Cases: {listing}."]
    cases = {c.case_id: c for c in spec.training}
    lines = []
    for kind, (case_id, dice) in picked:
        case = cases.get(case_id)
        pred = folder.validation_segmentation(case_id, spec.file_ending)
        lines.append(f"### {kind}: {case_id} (mean foreground Dice {dice:.3f})")
        lines.append("")
        if case is None or case.label is None or not pred.is_file():
            lines += [f"Overlay skipped: {'prediction' if case else 'case'} not found.", ""]
            continue
        try:
            out = _overlay(raw, case, pred, summary.label_names, folder.overlay(case_id))
        except AutosegError as e:
            lines += [f"Overlay skipped: {e.problems[0] if e.problems else e}.", ""]
            continue
        lines += [f"![{case_id}]({folder.relative(out)})", ""]
    return lines


def _overlay(raw: Path, case, pred_path: Path, label_names: dict[str, str], out: Path) -> Path:
    """Image slice with reference (solid) and prediction (dashed) contours, drawn to ``out``; returns it."""
    from matplotlib.lines import Line2D

    from autoseg.io.image import read_image, read_label

    image, geometry = read_image([raw / p for p in case.images])
    ref, _ = read_label(raw / case.label)
    pred, _ = read_label(pred_path)
    if ref.shape != image.shape[1:] or pred.shape != ref.shape:
        raise AutosegError(f"{pred_path}: shape {pred.shape} differs from the image's {image.shape[1:]}")
    fg = np.nonzero(ref > 0)[0]
    if fg.size == 0:
        fg = np.nonzero(pred > 0)[0]
    z = int((fg.min() + fg.max()) // 2) if fg.size else image.shape[1] // 2
    sl = image[0, z]
    lo, hi = np.percentile(sl, (0.5, 99.5)) if sl.size else (0.0, 1.0)
    fig = _figure(6, 6.6)
    ax = fig.subplots()
    ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest",
              aspect=geometry.spacing[1] / geometry.spacing[2])
    handles = []
    for i, key in enumerate(sorted((k for k in label_names if k != "0"), key=int)):
        value = int(key)
        color = _COLORS[i % len(_COLORS)]
        for mask, style in ((ref[z] == value, "solid"), (pred[z] == value, "dashed")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=1.5,
                           linestyles=style)
        handles.append(Line2D([], [], color=color, label=label_names[key]))
    handles += [Line2D([], [], color="w", ls="solid", label="reference"),
                Line2D([], [], color="w", ls="dashed", label="prediction")]
    ax.legend(handles=handles, loc="upper right", fontsize=7, facecolor="0.3", labelcolor="w", framealpha=0.8)
    ax.set_title(f"{case.case_id}: slice {z} (axis 0)")
    ax.set_axis_off()
    fig.tight_layout()
    _save(fig, out)
    return out
